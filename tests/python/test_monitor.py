"""The gradflow Python module on live torch.nn.Modules, checked against autograd."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
import torch.nn as nn

import gradflow


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return torch.tanh(self.norm(self.fc(x)))


class Net(nn.Module):
    """Nested modules, one layer called twice, a frozen layer and a forward of its own."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.encoder = nn.Sequential(Block(16), Block(16))
        self.shared = nn.Linear(16, 16)
        self.frozen = nn.Linear(16, 16)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(16, 3)
        self.outputs = {}

    def forward(self, x):
        keep = self.outputs
        keep.clear()
        h = keep.setdefault("stem", self.stem(x))
        h = self.encoder(torch.relu(h))
        h = torch.relu(keep.setdefault("shared#1", self.shared(h)))
        h = torch.relu(keep.setdefault("shared#2", self.shared(h)))  # the same layer again
        h = self.frozen(h)
        return keep.setdefault("head", self.head(h * 0.5 + h.mean(dim=1, keepdim=True)))


def rel_close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


class MonitorTest(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def train(self, model, monitor, steps, expected_params, expected_outputs=None):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        for _ in range(steps):
            x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
            loss = nn.functional.cross_entropy(model(x), y)
            if expected_outputs is not None:  # independent: autograd, before the Monitor hooks the graph
                names = list(model.outputs)
                grads = torch.autograd.grad(loss, [model.outputs[n] for n in names], retain_graph=True)
                expected_outputs.append({n: g.double().norm().item() for n, g in zip(names, grads)})
            monitor.watch(loss)
            loss.backward()
            expected_params.append({n: p.grad.double().norm().item()
                                    for n, p in model.named_parameters() if p.requires_grad})
            opt.step()
            opt.zero_grad()

    def frame_rows(self, monitor):
        f = monitor.trace_frame()
        lengths = {len(v) for v in f.values()}
        self.assertEqual(len(lengths), 1, "every column has one value per row")
        return f

    def test_parameter_gradient_norms_equal_param_grad(self):
        model = Net()
        monitor = gradflow.Monitor(model)
        expected = []
        self.train(model, monitor, 5, expected)
        f = self.frame_rows(monitor)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        checked = 0
        for step, name, kind, norm in zip(f["step"], f["name"], f["kind"], f["grad_norm"]):
            if kind != "parameter":
                continue
            self.assertIn(name, names)
            self.assertTrue(rel_close(norm, expected[step][name], 1e-12), (step, name, norm, expected[step][name]))
            checked += 1
        self.assertEqual(checked, 5 * len(names))
        self.assertNotIn("frozen.weight", set(f["name"]))  # requires_grad=False: not hooked

    def test_layer_outputs_are_named_after_named_modules_and_equal_autograd(self):
        model = Net()
        monitor = gradflow.Monitor(model)
        expected_params, expected_outputs = [], []
        self.train(model, monitor, 3, expected_params, expected_outputs)
        f = self.frame_rows(monitor)
        modules = {n for n, _ in model.named_modules()}
        seen = set()
        for step, name, kind, norm in zip(f["step"], f["name"], f["kind"], f["grad_norm"]):
            if kind != "activation":
                continue
            self.assertIn(name, modules)
            seen.add(str(name))
            if name == "shared":  # both calls together
                want = (expected_outputs[step]["shared#1"] ** 2 + expected_outputs[step]["shared#2"] ** 2) ** 0.5
                self.assertTrue(rel_close(norm, want, 1e-12), (step, norm, want))
            elif name in expected_outputs[step]:
                self.assertTrue(rel_close(norm, expected_outputs[step][name], 1e-12), (step, name))
        # The layers the forward keeps, the shared one once; the frozen layer has no
        # parameter to find it by.
        self.assertTrue({"stem", "shared", "head"} <= seen, seen)
        self.assertTrue({"encoder.0.fc", "encoder.1.fc"} <= seen, seen)
        self.assertNotIn("frozen", seen)

    def test_trace_frame_is_pandas_ready_and_agrees_with_the_csv(self):
        model = Net()
        monitor = gradflow.Monitor(model, every=2)
        self.train(model, monitor, 4, [])
        f = monitor.trace_frame()
        self.assertEqual(sorted(set(f["step"].tolist())), [0, 2])
        self.assertEqual(f["grad_norm"].dtype, np.float64)
        self.assertEqual(f["name"].dtype.kind, "U")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "trace.csv")
            monitor.save_csv(path)
            with open(path) as csv:
                rows = [line.split(",") for line in csv.read().splitlines()[1:]]
        norms = {(int(r[0]), r[1]): float(r[4]) for r in rows if r[3] == "norm" and r[5] == ""}
        for step, name, norm in zip(f["step"], f["name"], f["grad_norm"]):
            self.assertTrue(rel_close(norm, norms[(int(step), str(name))], 1e-9), (step, name))

    def test_a_trailing_step_no_optimizer_step_closed_is_marked_and_left_out(self):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = gradflow.Monitor(model, optimizer=opt)
        for i in range(3):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            monitor.watch(loss)
            loss.backward()
            if i < 2:  # the last backward's step is never taken
                opt.step()
                opt.zero_grad()
        f = monitor.trace_frame()
        closed = {int(s): int(c) for s, c in zip(f["step"], f["closed"])}
        self.assertEqual(closed, {0: 1, 1: 1, 2: 0})
        with tempfile.TemporaryDirectory() as d:
            gradflow.save_report(monitor, os.path.join(d, "r"))
            with open(os.path.join(d, "r", "run.json")) as run:
                self.assertEqual(json.load(run)["summary"]["recorded_steps"], 2)
        monitor.detach()

    def test_tap_records_the_gradient_of_a_tensor(self):
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        monitor = gradflow.Monitor(model, activations=False)
        x = torch.randn(16, 4)
        h = model[1](model[0](x))
        monitor.tap(h, "hidden")
        loss = model[2](h).pow(2).mean()
        expected = torch.autograd.grad(loss, h, retain_graph=True)[0].double().norm().item()
        monitor.watch(loss)
        loss.backward()
        monitor.step()
        f = monitor.trace_frame()
        (row,) = [i for i, n in enumerate(f["name"]) if n == "hidden"]
        self.assertTrue(rel_close(f["grad_norm"][row], expected, 1e-12))

    def test_errors_are_python_exceptions_with_one_line(self):
        with self.assertRaises(gradflow.UsageError) as e:
            gradflow.Monitor(nn.Linear(2, 2), every=0)
        self.assertIn("every", str(e.exception))
        self.assertEqual(str(e.exception).count("\n"), 0)
        self.assertTrue(issubclass(gradflow.UsageError, gradflow.GradflowError))
        with self.assertRaises(gradflow.UsageError):
            gradflow.require_healthy([], ["gloomy"])
        monitor = gradflow.Monitor(nn.Linear(2, 2))
        with self.assertRaises(gradflow.UsageError) as e:
            monitor.average_gradients()
        self.assertIn("process_group", str(e.exception))
        with self.assertRaises(TypeError):
            monitor.watch("not a tensor")
        with self.assertRaises(gradflow.UsageError) as e:
            gradflow.Monitor([torch.zeros(2, requires_grad=True)])
        self.assertIn("torch.nn.Module", str(e.exception))


class Vanishing(nn.Module):
    """A deep sigmoid MLP whose gradient vanishes; its data travel with it as buffers."""

    def __init__(self, depth=16, width=32):
        super().__init__()
        layers = []
        for i in range(depth):
            layers += [nn.Linear(8 if i == 0 else width, 1 if i == depth - 1 else width)]
            if i + 1 < depth:
                layers += [nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.register_buffer("x", torch.randn(64, 8))
        self.register_buffer("y", torch.randn(64, 1))

    def forward(self, x):
        return self.net(x)


class FusedRecurrentLayersTest(unittest.TestCase):
    """A fused nn.LSTM of several layers is recorded per layer ("rnn.l0", "rnn.l1"), each with the
    gradient that reaches its output sequence at every time step: checked against the same
    network unfused (one single-layer LSTM per layer, weights copied), where autograd reaches
    layer 0's sequence."""

    def test_each_layer_and_time_step_equals_the_unfused_networks_gradient(self):
        torch.manual_seed(0)
        for batch_first in (False, True):
            fused = nn.LSTM(4, 6, num_layers=2, batch_first=batch_first)
            layers = [nn.LSTM(4 if k == 0 else 6, 6, batch_first=batch_first) for k in range(2)]
            with torch.no_grad():
                for k, layer in enumerate(layers):
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(layer, name + "_l0").copy_(getattr(fused, f"{name}_l{k}"))
            x = torch.randn((3, 7, 4) if batch_first else (7, 3, 4))
            target = torch.randn((3, 7, 6) if batch_first else (7, 3, 6))
            seq0, _ = layers[0](x)
            seq1, _ = layers[1](seq0)
            truth = torch.autograd.grad(nn.functional.mse_loss(seq1, target), [seq0, seq1])
            monitor = gradflow.Monitor(fused)
            out, _ = fused(x)
            loss = nn.functional.mse_loss(out, target)
            monitor.watch(loss)
            loss.backward()
            with tempfile.TemporaryDirectory() as d:
                monitor.save_json(os.path.join(d, "t.json"))
                with open(os.path.join(d, "t.json")) as f:
                    trace = json.load(f)
            names = [s["name"] for s in trace["series"]]
            records = {names[r["series"]]: r for r in trace["steps"][0]["records"]}
            self.assertNotIn("(root)", records)  # the module's output is its last layer's
            time_dim = 1 if batch_first else 0
            for k, name in enumerate(["l0", "l1"]):
                g = truth[k].double()
                rec = records[name]
                self.assertTrue(rel_close(rec["norm"], g.norm().item(), 1e-6), (batch_first, name))
                per_step = g.pow(2).sum(dim=[d for d in range(3) if d != time_dim]).sqrt()
                self.assertEqual(len(rec["time"]), 7)
                for got, want in zip(rec["time"], per_step.tolist()):
                    self.assertTrue(rel_close(got, want, 1e-6), (batch_first, name, got, want))


class ModelGraphTest(unittest.TestCase):
    """Which module feeds which, read from the autograd graph between their outputs: parallel
    branches are not chained, a module called twice is one node, and depth is the longest path."""

    def graph(self, model, forward):
        monitor = gradflow.Monitor(model)
        loss = forward()
        monitor.watch(loss)
        loss.backward()
        with tempfile.TemporaryDirectory() as d:
            monitor.save_json(os.path.join(d, "t.json"))
            gradflow.save_report(monitor, os.path.join(d, "r"))
            with open(os.path.join(d, "t.json")) as f:
                trace = json.load(f)
            with open(os.path.join(d, "r", "run.json")) as f:
                run = json.load(f)
        names = [s["name"] for s in trace["series"]]
        inputs = {s["name"]: sorted(names[i] for i in s.get("inputs", [])) for s in trace["series"]
                  if s["kind"] == "activation"}
        return inputs, run["summary"]

    def test_a_vaes_two_heads_feed_the_decoder_side_by_side(self):
        torch.manual_seed(0)
        vae = nn.ModuleDict({"fc1": nn.Linear(8, 16), "fc21": nn.Linear(16, 4), "fc22": nn.Linear(16, 4),
                             "fc3": nn.Linear(4, 16), "fc4": nn.Linear(16, 8)})
        x = torch.randn(32, 8)

        def forward():
            h = torch.relu(vae["fc1"](x))
            mu, logvar = vae["fc21"](h), vae["fc22"](h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            recon = torch.sigmoid(vae["fc4"](torch.relu(vae["fc3"](z))))
            return nn.functional.mse_loss(recon, x) - 0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())

        inputs, summary = self.graph(vae, forward)
        self.assertEqual(inputs, {"fc1": [], "fc21": ["fc1"], "fc22": ["fc1"], "fc3": ["fc21", "fc22"], "fc4": ["fc3"]})
        self.assertEqual(summary["detail"]["depth"]["span"], 2)  # fc1 -> fc21 -> fc3, fc4 the output

    def test_a_siamese_twin_is_one_module_feeding_the_head(self):
        torch.manual_seed(0)
        net = nn.ModuleDict({"encoder": nn.Linear(8, 8), "head": nn.Linear(8, 1)})
        a, b = torch.randn(16, 8), torch.randn(16, 8)

        def forward():
            d = (net["encoder"](a) - net["encoder"](b)).abs()
            return net["head"](d).pow(2).mean()

        inputs, _ = self.graph(net, forward)
        self.assertEqual(inputs, {"encoder": [], "head": ["encoder"]})


class ModelFactsTest(unittest.TestCase):
    """What the program says of its model (traits=, tap(activation=)) and what no gradient looks like."""

    def report(self, monitor, **kwargs):
        with tempfile.TemporaryDirectory() as d:
            return gradflow.save_report(monitor, os.path.join(d, "r"), **kwargs)

    def vanishing_remedy(self, **kwargs):
        model = Vanishing()
        monitor = gradflow.Monitor(model, **kwargs.pop("monitor", {}))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            loss = nn.functional.mse_loss(model(model.x), model.y)
            monitor.watch(loss)
            loss.backward()
            opt.step()
            opt.zero_grad()
        found = [f for f in self.report(monitor, **kwargs) if f.kind == "vanishing"]
        self.assertTrue(found)
        return found[0].remedy

    def test_traits_choose_remedies_that_fit_the_model(self):
        plain = self.vanishing_remedy()
        self.assertIn("batch normalisation", plain)
        self.assertIn("residual connections", plain)
        declared = self.vanishing_remedy(traits={"activation": "sigmoid", "norm": "batch", "residual": True})
        self.assertNotIn("batch normalisation", declared)
        self.assertNotIn("residual connections", declared)
        self.assertIn("ReLU", declared)
        # Given to the Monitor, they reach save_report too.
        self.assertEqual(self.vanishing_remedy(monitor={"traits": {"norm": "batch", "residual": True,
                                                                   "activation": "sigmoid"}}), declared)
        with self.assertRaises(gradflow.UsageError) as e:
            gradflow.Monitor(Vanishing(), traits={"depth": 3})
        self.assertIn("traits= has no 'depth'", str(e.exception))

    def saved_traits(self, model, x, **kwargs):
        monitor = gradflow.Monitor(model, **kwargs)
        out = model(x)
        loss = (out[0] if isinstance(out, tuple) else out).pow(2).mean()
        monitor.watch(loss)
        loss.backward()
        with tempfile.TemporaryDirectory() as d:
            gradflow.save_report(monitor, os.path.join(d, "r"))
            with open(os.path.join(d, "r", "run.json")) as f:
                return json.load(f)["traits"]

    def test_the_module_tree_says_what_the_model_has(self):
        bn = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
        traits = self.saved_traits(bn, torch.randn(32, 8))
        self.assertEqual((traits["norm"], traits["activation"]), ("batch", "relu"))
        lstm = self.saved_traits(nn.LSTM(4, 8), torch.randn(5, 3, 4))
        self.assertEqual((lstm["recurrent"], lstm["cell"]), (True, "lstm"))
        ln = self.saved_traits(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.GELU(), nn.Tanh()), torch.randn(4, 8))
        self.assertEqual(ln["norm"], "layer")
        self.assertEqual(ln["activation"], "none")  # two kinds of activation: none is assumed
        # A skip connection in the graph and the program's clipping are read from the run.
        torch.manual_seed(0)
        block = nn.ModuleDict({"stem": nn.Linear(8, 16), "f": nn.Linear(16, 16), "head": nn.Linear(16, 1)})
        opt = torch.optim.SGD(block.parameters(), lr=0.01)
        monitor = gradflow.Monitor(block, optimizer=opt)
        for _ in range(3):
            h = block["stem"](torch.randn(32, 8))
            loss = block["head"](h + torch.relu(block["f"](h))).pow(2).mean() * 100
            monitor.watch(loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(block.parameters(), 0.5)
            opt.step()
            opt.zero_grad()
        with tempfile.TemporaryDirectory() as d:
            gradflow.save_report(monitor, os.path.join(d, "r"))
            with open(os.path.join(d, "r", "run.json")) as f:
                read = json.load(f)["traits"]
        self.assertTrue(read["residual"])
        self.assertTrue(rel_close(read["clip_norm"], 0.5, 1e-5), read["clip_norm"])
        # What the program says wins over what the tree shows.
        said = self.saved_traits(bn, torch.randn(32, 8), traits={"activation": "leaky_relu"})
        self.assertEqual((said["norm"], said["activation"]), ("batch", "leaky_relu"))

    def test_a_tap_with_its_activation_records_dead_units(self):
        torch.manual_seed(0)
        lin = nn.Linear(8, 16)
        with torch.no_grad():
            lin.bias[:8] = -100.0  # half the units never fire
        monitor = gradflow.Monitor(lin)
        x = torch.randn(32, 8)
        h = torch.relu(lin(x))
        monitor.tap(h, "h.1", activation="relu")
        loss = h.sum()
        monitor.watch(loss)
        loss.backward()
        monitor.flush()
        with tempfile.TemporaryDirectory() as d:
            monitor.save_json(os.path.join(d, "t.json"))
            with open(os.path.join(d, "t.json")) as f:
                trace = json.load(f)
        names = [s["name"] for s in trace["series"]]
        tap = [r for r in trace["steps"][0]["records"] if names[r["series"]] == "h.1"][0]
        truth = (h == 0).all(dim=0).double().mean().item()
        self.assertEqual(tap["forward"]["dead_fraction"], truth)
        self.assertGreaterEqual(truth, 0.5)

    def test_a_loss_without_gradient_is_no_gradient(self):
        model = Vanishing(depth=3)
        monitor = gradflow.Monitor(model)
        for _ in range(4):
            loss = (model(model.x) * 0.0).sum()  # depends on the parameters with derivative 0
            monitor.watch(loss)
            loss.backward()
            model.zero_grad()
        kinds = [f.kind for f in self.report(monitor)]
        self.assertIn("no_gradient", kinds)


def explicit_hessian(loss, params):
    """The Hessian of `loss` with respect to `params`, row by row (double backward)."""
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params, create_graph=True)])
    rows = [torch.cat([r.reshape(-1) for r in torch.autograd.grad(g[i], params, retain_graph=True)]) for i in range(g.numel())]
    return torch.stack(rows)


class SharpnessTest(unittest.TestCase):
    """sharpness_every=K: λ_max against the explicit Hessian; measuring changes nothing."""

    @staticmethod
    def train(measure, steps=6, dropout=0.2):
        torch.manual_seed(3)
        net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(dropout), nn.Linear(5, 1)).double()
        xf, yf = torch.randn(32, 3, dtype=torch.double), torch.randn(32, 1, dtype=torch.double)
        fixed = lambda: nn.functional.mse_loss(net(xf), yf)  # noqa: E731
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        options = dict(sharpness_every=2, sharpness_loss=fixed) if measure else {}
        monitor = gradflow.Monitor(net, optimizer=opt, **options)
        losses = []
        for _ in range(steps):
            x, y = torch.randn(32, 3, dtype=torch.double), torch.randn(32, 1, dtype=torch.double)
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            monitor.watch(loss)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return net, fixed, monitor, losses

    def test_training_is_unchanged_and_the_step_size_recorded(self):
        bare_net, _, _, bare_losses = self.train(False)
        net, _, monitor, losses = self.train(True)
        self.assertEqual(losses, bare_losses)
        for a, b in zip(list(net.state_dict().values()), list(bare_net.state_dict().values())):
            self.assertTrue(torch.equal(a, b))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "trace.json")
            monitor.save_json(path)
            with open(path) as f:
                steps = json.load(f)["steps"]
        self.assertEqual([s["step"] for s in steps if "sharpness" in s], [0, 2, 4])
        self.assertTrue(all(s["learning_rate"] == {"lr": 0.1, "momentum": 0.9} for s in steps))

    def test_it_is_the_top_eigenvalue_of_the_explicit_hessian(self):
        net, fixed, monitor, _ = self.train(True, steps=5, dropout=0.0)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "trace.json")
            monitor.save_json(path)
            with open(path) as f:
                measured = json.load(f)["steps"][4]["sharpness"]["lambda_max"]
        # The last step's update left the parameters as they are now; BatchNorm's running
        # statistics are no input of a train-mode forward.
        top = torch.linalg.eigvalsh(explicit_hessian(fixed(), list(net.parameters()))).max().item()
        self.assertAlmostEqual(measured, top, delta=1e-4 * abs(top))

    def test_a_sharpness_every_without_a_loss_is_refused(self):
        with self.assertRaises(gradflow.UsageError):
            gradflow.Monitor(nn.Linear(2, 1), sharpness_every=2)


class SameFindingsAsTheCppApi(unittest.TestCase):
    STEPS, LR = 20, 0.1

    def test_findings_match_the_cpp_monitor_on_the_same_model(self):
        torch.manual_seed(3)
        model = Vanishing()
        with tempfile.TemporaryDirectory() as d:
            scripted = os.path.join(d, "model.pt")
            torch.jit.script(model).save(scripted)
            monitor = gradflow.Monitor(model)
            params = [p for p in model.parameters()]
            for _ in range(self.STEPS):
                loss = (model(model.x) - model.y).pow(2).mean()
                monitor.watch(loss)
                loss.backward()
                with torch.no_grad():
                    for p in params:
                        p -= self.LR * p.grad
                        p.grad = None
            findings = gradflow.save_report(monitor, os.path.join(d, "py"), label="python")
            cpp = os.environ["GRADFLOW_REFERENCE_RUN"]
            subprocess.run([cpp, scripted, str(self.STEPS), str(self.LR), os.path.join(d, "cpp")], check=True)
            with open(os.path.join(d, "cpp", "run.json")) as run:
                cpp_findings = json.load(run)["findings"]
        self.assertTrue(findings, "the deep sigmoid net has findings")
        self.assertIn("vanishing", [f.kind for f in findings])
        self.assertEqual([(f.kind, f.severity, f.where) for f in findings],
                         [(f["kind"], f["severity"], f["where"]) for f in cpp_findings])
        for f, g in zip(findings, cpp_findings):
            evidence = dict(f.evidence)
            self.assertEqual(sorted(evidence), sorted(g["evidence"]))
            for name, value in evidence.items():
                self.assertTrue(rel_close(value, g["evidence"][name], 1e-6), (f.kind, name, value, g["evidence"][name]))
        with self.assertRaises(gradflow.GradientHealthError) as e:
            gradflow.require_healthy(findings, ["vanishing"])
        self.assertIn("vanishing", [f.kind for f in e.exception.findings])
        gradflow.require_healthy(findings, ["non_finite"])  # none of that kind: no exception


if __name__ == "__main__":
    unittest.main(verbosity=2)
