"""Attaching gradflow changes nothing, and what it recorded survives the program: the program's
hooks run as without it, a program that raises leaves its steps in the out= folder, only rank 0
writes under torch.distributed, and messages name Python's arguments."""
import datetime
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

import torch
import torch.distributed as dist
import torch.nn as nn

import gradflow
from ranks import run_ranks

STEPS = 5


def make_model():
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


HOOKS = {
    "scale": lambda g: g * 0.5,
    "clip_value": lambda g: g.clamp(-1e-3, 1e-3),
    "zero": lambda g: torch.zeros_like(g),
}


def attach_in_order(model, order, install):
    """Calls the program's `install()` before or after attaching a Monitor ("before", "after"), or
    with no Monitor ("none"); returns the Monitor or None."""
    if order != "after":
        install()
    monitor = gradflow.Monitor(model) if order != "none" else None
    if order == "after":
        install()
    return monitor


def last_step_parameter_norms(monitor):
    """{parameter name: recorded gradient norm} of the Monitor's latest step."""
    frame = monitor.trace_frame()
    last = frame["step"] == frame["step"].max()
    return {str(n): float(v) for n, v, k, keep in zip(frame["name"], frame["grad_norm"], frame["kind"], last)
            if keep and k == "parameter"}


def train(hook, order, module_hooks=False):
    """Trains with the program's `hook` on the first layer's parameters, registered before or after
    the Monitor (or with no Monitor); returns the parameters, the hooks' call counts and the number of
    records checked against p.grad where the optimizer reads it."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    calls = {"tensor": 0, "forward": 0, "backward": 0}

    def counted(g):
        calls["tensor"] += 1
        return HOOKS[hook](g)

    def install():
        for p in model[0].parameters():
            p.register_hook(counted)
        if module_hooks:
            model[2].register_forward_hook(lambda m, i, o: calls.__setitem__("forward", calls["forward"] + 1))
            model[2].register_full_backward_hook(lambda m, gi, go: calls.__setitem__("backward", calls["backward"] + 1))

    monitor = attach_in_order(model, order, install)
    g = torch.Generator().manual_seed(5)
    checked = 0
    for _ in range(STEPS):
        x, y = torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)
        loss = nn.functional.mse_loss(model(x), y)
        if monitor:
            monitor.watch(loss)
        loss.backward()
        if monitor:
            recorded = last_step_parameter_norms(monitor)
            for name, p in model.named_parameters():
                expected = p.grad.double().norm().item()
                assert name in recorded, f"{name} not recorded"
                assert abs(recorded[name] - expected) <= 1e-9 * max(expected, 1e-300), (name, recorded[name], expected)
                checked += 1
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()], calls, checked


class HooksCoexistTest(unittest.TestCase):
    def test_training_is_bit_identical_and_every_program_hook_runs_as_often(self):
        for hook in HOOKS:
            for order in ("before", "after"):
                with self.subTest(hook=hook, order=order):
                    bare, bare_calls, _ = train(hook, "none", module_hooks=True)
                    watched, calls, checked = train(hook, order, module_hooks=True)
                    self.assertEqual(bare_calls, {"tensor": 2 * STEPS, "forward": STEPS, "backward": STEPS})
                    self.assertEqual(calls, bare_calls)
                    for a, b in zip(watched, bare):
                        self.assertTrue(torch.equal(a, b))
                    self.assertEqual(checked, 6 * STEPS)


def train_in_backward(order, detach_at=STEPS):
    """The optimizer step inside backward, as PyTorch's tutorial for it writes it: one optimizer per
    parameter, stepped by the parameter's post-accumulate-grad hook (torch 2.1+), which then frees
    the gradient. The hooks are registered before or after the Monitor, or with no Monitor; returns
    the parameters, the norms each hook saw and what the Monitor recorded, one dict per step
    before `detach_at`, where the Monitor is detached."""
    model = make_model()
    optimizers = {p: torch.optim.Adam([p], lr=0.01) for p in model.parameters()}
    names = {p: name for name, p in model.named_parameters()}
    seen = []

    def step_in_backward(p):
        seen[-1][names[p]] = p.grad.double().norm().item()
        optimizers[p].step()
        optimizers[p].zero_grad()

    def install():
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(step_in_backward)

    monitor = attach_in_order(model, order, install)
    g = torch.Generator().manual_seed(5)
    recorded = []
    for step in range(STEPS):
        if monitor and step == detach_at:
            monitor.detach()
            monitor = None
        x, y = torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)
        seen.append({})
        loss = nn.functional.mse_loss(model(x), y)
        if monitor:
            monitor.watch(loss)
        loss.backward()
        if monitor:
            recorded.append(last_step_parameter_norms(monitor))
    return [p.detach().clone() for p in model.parameters()], seen, recorded


@unittest.skipUnless(hasattr(torch.Tensor, "register_post_accumulate_grad_hook"),
                     f"torch {torch.__version__} has no Tensor.register_post_accumulate_grad_hook (2.1+)")
class StepInBackwardTest(unittest.TestCase):
    def test_an_optimizer_stepped_by_post_accumulate_grad_hooks_trains_as_without_gradflow(self):
        bare, bare_seen, _ = train_in_backward("none")
        self.assertEqual([len(s) for s in bare_seen], [6] * STEPS)
        for order in ("before", "after"):
            with self.subTest(order=order):
                watched, seen, recorded = train_in_backward(order)
                for a, b in zip(watched, bare):
                    self.assertTrue(torch.equal(a, b))
                self.assertEqual(seen, bare_seen)
                # What each step's hooks found in p.grad is what gradflow recorded for that step.
                self.assertEqual(len(recorded), STEPS)
                for step, (got, want) in enumerate(zip(recorded, seen)):
                    self.assertEqual(sorted(got), sorted(want), f"step {step}")
                    for name, norm in want.items():
                        self.assertLessEqual(abs(got[name] - norm), 1e-9 * norm, f"step {step} {name}")
        # Detached, gradflow leaves the program's hooks in place and in order.
        watched, seen, recorded = train_in_backward("before", detach_at=2)
        for a, b in zip(watched, bare):
            self.assertTrue(torch.equal(a, b))
        self.assertEqual(seen, bare_seen)
        self.assertEqual(len(recorded), 2)


PROGRAM = textwrap.dedent("""
    import sys, math, torch, torch.nn as nn, gradflow
    out, steps, raise_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradflow.Monitor(model, out=out)
    g = torch.Generator().manual_seed(5)
    for step in range(steps):
        x, y = torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)
        if step == raise_at:
            raise FloatingPointError(f"the loss overflowed at step {step}")
        loss = nn.functional.mse_loss(model(x), y)
        monitor.watch(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    gradflow.save_report(monitor, out)
""")


def step_lines(folder):
    with open(os.path.join(folder, "trace.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if line.startswith('{"step"')]


class SurviveTest(unittest.TestCase):
    def run_program(self, folder, steps, raise_at):
        script = os.path.join(folder, "train.py")
        with open(script, "w") as f:
            f.write(PROGRAM)
        return subprocess.run([sys.executable, script, os.path.join(folder, "out"), str(steps), str(raise_at)],
                              capture_output=True, text=True, timeout=120)

    def test_a_program_that_raises_at_step_k_leaves_steps_before_k(self):
        k = 6
        with tempfile.TemporaryDirectory() as died, tempfile.TemporaryDirectory() as lived:
            crash = self.run_program(died, 10, k)
            self.assertNotEqual(crash.returncode, 0)
            self.assertIn("FloatingPointError", crash.stderr)
            whole = self.run_program(lived, 10, -1)
            self.assertEqual(whole.returncode, 0, whole.stderr)
            kept, full = step_lines(os.path.join(died, "out")), step_lines(os.path.join(lived, "out"))
            self.assertEqual([s["step"] for s in kept], list(range(k)))
            self.assertEqual(kept, full[:k])  # figure for figure

            out = os.path.join(died, "out")
            findings = gradflow.report(out)
            self.assertIsInstance(findings, list)
            with open(os.path.join(out, "report.md")) as f:
                md = f.read()
            self.assertIn("# Gradient flow of out", md)  # named after its folder
            self.assertIn("The program stopped before it finished", md)
            with open(os.path.join(out, "run.json")) as f:
                run = json.load(f)
            self.assertTrue(run["interrupted"])
            self.assertEqual([s["step"] for s in run["trace"]["steps"]], list(range(k)))
            # A torn last line: the program died while writing it.
            with open(os.path.join(out, "trace.jsonl"), "a") as f:
                f.write('{"step":{"step":6,"reco')
            gradflow.report(out, out=os.path.join(died, "again"))
            with open(os.path.join(died, "again", "run.json")) as f:
                self.assertEqual(len(json.load(f)["trace"]["steps"]), k)
            cli = os.environ.get("GRADFLOW_CLI")
            if cli:
                r = subprocess.run([cli, "report", out, "--out", os.path.join(died, "cli")], capture_output=True,
                                   text=True, timeout=120)
                self.assertEqual(r.returncode, 0, r.stderr)

            # The finished run: save_report marked its stream finished and wrote nothing twice.
            lived_out = os.path.join(lived, "out")
            self.assertEqual(len(full), 10)
            self.assertEqual(len(set(s["step"] for s in full)), 10)
            with open(os.path.join(lived_out, "run.json")) as f:
                self.assertFalse(json.load(f)["interrupted"])


SUBCLASS_PROGRAM = """
import sys, tempfile, torch, gradflow
from torch.testing._internal.two_tensor import TwoTensor

def train(monitored):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    w = model[0].weight.detach()
    model[0].weight = torch.nn.Parameter(TwoTensor(w.clone(), w.clone()))  # each op runs on both halves
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradflow.Monitor(model, optimizer=opt) if monitored else None
    for _ in range(4):
        loss = torch.nn.functional.mse_loss(model(torch.randn(5, 4)), torch.randn(5, 3))
        if monitor:
            monitor.watch(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    findings = None
    if monitor:
        with tempfile.TemporaryDirectory() as d:
            findings = [f.kind for f in gradflow.save_report(monitor, d)]
    return [p.detach().clone() for p in model.parameters()], findings

bare, _ = train(False)
got, findings = train(True)
print(all(torch.equal(a.a if hasattr(a, "a") else a, b.a if hasattr(b, "a") else b) for a, b in zip(bare, got)), findings)
"""


class TensorSubclassTest(unittest.TestCase):
    """Parameters that are tensor subclasses (a quantized weight, a TwoTensor) keep their values
    behind their own operations: gradflow must not read their memory, nor that of a gradient that
    arrives as one; the program trains as without it."""

    def test_a_model_with_subclass_parameters_trains_unchanged_and_says_what_is_not_recorded(self):
        r = subprocess.run([sys.executable, "-c", SUBCLASS_PROGRAM], capture_output=True, text=True, timeout=240)
        self.assertEqual(r.returncode, 0, r.stderr)
        # Not one parameter gradient was readable here (each is a TwoTensor): the report says so.
        self.assertEqual(r.stdout.split(None, 1), ["True", "['not_recorded']\n"])
        self.assertIn("gradflow: 1 parameter(s) are tensor subclasses (0.weight)", r.stderr)


class ReplacedParametersTest(unittest.TestCase):
    """Parameters replaced after the Monitor attached (load_state_dict(assign=True), fully_shard,
    to_empty) never send it a gradient: the first watch() says so, once; kept ones say nothing."""

    def run_steps(self, replace):
        import contextlib
        import io
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        monitor = gradflow.Monitor(model)
        if replace:
            model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            for _ in range(2):
                loss = model(torch.randn(3, 4)).pow(2).mean()
                monitor.watch(loss)
                loss.backward()
        monitor.detach()
        return err.getvalue()

    def test_the_report_says_no_parameter_gradient_was_recorded(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        monitor = gradflow.Monitor(model)
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
        for _ in range(3):
            loss = model(torch.randn(3, 4)).pow(2).mean()
            monitor.watch(loss)
            loss.backward()
        with tempfile.TemporaryDirectory() as d:
            findings = gradflow.save_report(monitor, d)
        self.assertEqual([(f.kind, f.where) for f in findings], [("not_recorded", "every parameter")])
        self.assertIn("3 steps were recorded, but not one parameter gradient", findings[0].message)

    def test_the_first_watch_says_when_the_parameters_were_replaced(self):
        said = self.run_steps(replace=True)
        self.assertEqual(said.count("gradflow: 4 of the 4 parameters this Monitor attached to are no longer the model's"), 1, said)
        self.assertEqual(self.run_steps(replace=False), "")


class MessagesTest(unittest.TestCase):
    def message(self, call):
        with self.assertRaises(gradflow.UsageError) as e:
            call()
        return str(e.exception)

    def test_messages_name_pythons_arguments(self):
        model = make_model()
        self.assertIn("every= must be at least 1", self.message(lambda: gradflow.Monitor(model, every=0)))
        self.assertIn("saturation_threshold= must lie strictly between 0 and 1",
                      self.message(lambda: gradflow.Monitor(model, saturation_threshold=1.5)))
        with tempfile.TemporaryDirectory() as d:
            m = gradflow.Monitor(model, out=d)
            loss = model(torch.randn(4, 6)).pow(2).mean()
            m.watch(loss)
            loss.backward()
            gradflow.save_report(m, os.path.join(d, "report"))
            msg = self.message(lambda: gradflow.save_report(m, os.path.join(d, "report")))
            self.assertIn("force=", msg)
            self.assertNotIn("::", msg)
            msg = self.message(lambda: gradflow.Monitor(make_model(), out=d))
            self.assertIn("already holds a recording", msg)
            self.assertIn("force=", msg)
            gradflow.Monitor(make_model(), out=d, force=True)

    def test_a_module_built_for_another_torch_is_refused_at_import(self):
        # A copy of the package whose build record names another torch: importing it must fail with
        # one line naming both versions and the fix, before the extension's symbols are looked up.
        import shutil
        here = os.path.dirname(gradflow.__file__)
        with tempfile.TemporaryDirectory() as d:
            shutil.copytree(here, os.path.join(d, "gradflow"))
            with open(os.path.join(d, "gradflow", "_build.py"), "w") as f:
                f.write('TORCH_VERSION = "0.0.1"\n')
            run = subprocess.run([sys.executable, "-c", "import gradflow"], cwd=d, capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONPATH=d))
        self.assertNotEqual(run.returncode, 0)
        last = run.stderr.strip().splitlines()[-1]
        self.assertIn("ImportError: gradflow was built against torch 0.0.1", last)
        self.assertIn(f"this environment has torch {torch.__version__}", last)
        self.assertIn("pip install --force-reinstall --no-deps", last)

    def test_arguments_that_cannot_mean_anything_are_refused(self):
        class PlainList(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = [nn.Linear(2, 2), nn.Linear(2, 2)]  # not registered

        self.assertIn("no trainable parameter", self.message(lambda: gradflow.Monitor(PlainList())))
        with tempfile.TemporaryDirectory() as d:
            # A program that failed before its first step leaves nothing that blocks its next run.
            self.assertIn("no trainable parameter", self.message(lambda: gradflow.Monitor(PlainList(), out=d)))
            gradflow.Monitor(make_model(), out=d)
        model = make_model()
        m = gradflow.Monitor(model)
        per_example = (model(torch.randn(4, 6)) ** 2).mean(dim=1)
        self.assertIn("tensor of 4 elements", self.message(lambda: m.watch(per_example)))
        self.assertIn("needs a name", self.message(lambda: m.tap(torch.randn(2, requires_grad=True), "")))


def sigmoid_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Sigmoid(), *[m for _ in range(6) for m in (nn.Linear(16, 16), nn.Sigmoid())],
                         nn.Linear(16, 1))


def train_ranks(net, monitor, rank, ddp):
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(10 + rank)
    for _ in range(30):
        loss = nn.functional.mse_loss(net(torch.randn(16, 6, generator=g)), torch.randn(16, 1, generator=g))
        if monitor:
            monitor.watch(loss)
        loss.backward()
        if not ddp:
            monitor.average_gradients()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in net.parameters()]


def rank_main(rank, world, port, folder, ddp):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    net = sigmoid_net()
    if ddp:
        net = nn.parallel.DistributedDataParallel(net)
        monitor = gradflow.Monitor(net, out=folder)
    else:
        monitor = gradflow.Monitor(net, process_group=dist.group.WORLD, out=folder)
    trained = train_ranks(net, monitor, rank, ddp)
    if ddp:  # DDP's own hooks still average: the same parameters as DDP without gradflow
        bare = train_ranks(nn.parallel.DistributedDataParallel(sigmoid_net()), None, rank, ddp)
        if not all(torch.equal(a, b) for a, b in zip(trained, bare)):
            sys.exit("training under DistributedDataParallel changed when gradflow was attached")
    findings = gradflow.save_report(monitor, folder)
    with open(os.path.join(os.path.dirname(folder), f"findings.{rank}.json"), "w") as f:
        json.dump([[x.kind, x.severity, x.where, x.message] for x in findings], f)
    dist.barrier()
    dist.destroy_process_group()


class OneWriterTest(unittest.TestCase):
    def ranks(self, ddp):
        with tempfile.TemporaryDirectory() as d:
            folder = os.path.join(d, "report")
            codes, errs = run_ranks(__file__, 2, [folder, int(ddp)], timeout=180)
            self.assertEqual(codes, [0, 0], errs)
            found = []
            for r in range(2):
                with open(os.path.join(d, f"findings.{r}.json")) as f:
                    found.append(json.load(f))
            self.assertTrue(found[0], "the sigmoid net should give a finding")
            self.assertEqual(found[0], found[1])
            self.assertTrue(os.path.exists(os.path.join(folder, "report.html")))
            self.assertEqual(len(step_lines(folder)), 30)  # one writer: no step twice
            leftovers = [n for n in os.listdir(folder) if ".tmp." in n]
            self.assertEqual(leftovers, [])

    def test_gradflows_own_group(self):
        self.ranks(ddp=False)

    def test_distributed_data_parallel(self):
        self.ranks(ddp=True)


if __name__ == "__main__":
    if len(sys.argv) == 6:
        rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1")
    else:
        unittest.main(verbosity=2)
