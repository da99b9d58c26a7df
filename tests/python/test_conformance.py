"""Attaching gradflow changes nothing, over the surface of PyTorch it touches, enumerated when the
test runs: every torch.nn module class (those with parameters trained, the others checked to have
none), every torch.optim optimizer, and what programs do to a model. For each: training is
bit-identical with and without a Monitor, the whole-model pickle, torch.save, deepcopy and
torch.jit.script behave as without it (a copy records nothing), and every recorded figure equals
the truth autograd's own nodes deliver (conformance.Truth). The coverage is printed at the end:
classes passed, and those skipped with the reason."""
import copy
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import unittest
import warnings

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import gradflow
from conformance import (NO_TRAINING, VARIANTS, WITH_PARAMETERS, Truth, build_without_parameters, calls_stats,
                         first_tensor, fused_layer_gradients, module_classes, optimizer_classes, outcome, rows_of,
                         save_load, stats)

STEPS = 3
REL = 1e-9
COVERAGE = {}


def close(a, b, rel=REL):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def layered(module):
    return isinstance(module, nn.RNNBase) and module.num_layers > 1


def expected_rows(model, truth, context=None):
    """series name -> the truth's figures for one step: every parameter, every module output (a
    fused recurrent root module's layers from `context`, its input and output weight)."""
    rows = {name: stats(g) for name, g in truth.params.items()}
    modules = dict(model.named_modules())
    for name, grads in truth.outputs.items():
        module = modules["" if name == "(root)" else name]
        if layered(module) and module is model:
            x, weight = context
            for k, g in enumerate(fused_layer_gradients(module, x[0], weight)):
                rows["l{}".format(k)] = calls_stats([g])
        elif layered(module):
            continue  # a fused recurrent module inside another: covered as the root case
        else:
            rows[name] = calls_stats(grads)
    return rows


def compare(test, recorded, expected, where):
    """Every expected series recorded with the truth's figures, and nothing recorded beyond them."""
    test.assertEqual(sorted(recorded), sorted(expected), where)
    for name, figures in expected.items():
        for key, value in figures.items():
            test.assertTrue(close(recorded[name][key], value), (where, name, key, recorded[name][key], value))
    return len(expected)


def module_loss(inputs):
    """The loss of a module under test: its first output weighted by a fixed random tensor, so that
    dL/d(output) is that tensor; returns (loss, (inputs, weight))."""
    def loss_of(model, g):
        x = inputs(g)
        out = first_tensor(model(*x))
        weight = torch.randn(out.shape, generator=g)
        return (out * weight).sum(), (x, weight)
    return loss_of


def train(test, make, new_loss, mode, steps=STEPS, optimizer=None, truth_outputs=True):
    """Trains `make()` for `steps` SGD steps on `loss_of(model, generator)` -> (loss, context), a
    `loss_of` that `new_loss()` makes for this run (it may keep state across its steps):
    bare, 'watched' (a Monitor), or 'truth' (a Monitor, every recorded figure compared with the
    truth). Returns the losses, the parameters after each step, how many series were compared,
    and the Monitor's trace frame."""
    torch.manual_seed(0)
    model = make()
    loss_of = new_loss()
    monitor = gradflow.Monitor(model) if mode != "bare" else None
    truth = Truth(model, outputs=truth_outputs) if mode == "truth" else None
    g = torch.Generator().manual_seed(1)
    opt, losses, params, checked = None, [], [], 0
    for step in range(steps):
        if truth:
            truth.new_step()
        loss, context = loss_of(model, g)
        if opt is None:  # after the first forward: a lazy module's parameters exist from then on
            opt = (optimizer or (lambda m: torch.optim.SGD(m.parameters(), lr=0.05)))(model)
        if monitor:
            monitor.watch(loss)
        if truth:
            truth.arm()
        loss.backward()
        if truth:
            recorded = rows_of(monitor.trace_frame(), step)
            if not truth_outputs:  # a ScriptModule has no forward hooks: its parameters only
                recorded = {n: r for n, r in recorded.items() if n in dict(model.named_parameters())}
            checked += compare(test, recorded, expected_rows(model, truth, context), "step {}".format(step))
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        params.append([p.detach().clone() for p in model.parameters()])
    frame = monitor.trace_frame() if monitor else None
    if monitor:
        monitor.detach()
    return losses, params, checked, frame


def conforms(test, make, new_loss, warm_up=False, **kwargs):
    """Bit-identical with and without the Monitor, every figure the truth's; returns the count compared.
    `warm_up`: a bare run first, left out of the comparison, for code whose first run in a process
    differs from later ones without gradflow (a bare run against a bare run shows it)."""
    if warm_up:
        train(test, make, new_loss, "bare", **kwargs)
    same_training(test, train(test, make, new_loss, "bare", **kwargs), train(test, make, new_loss, "watched", **kwargs))
    checked = train(test, make, new_loss, "truth", **kwargs)[2]
    test.assertGreater(checked, 0)
    return checked


def same_training(test, a, b):
    test.assertEqual(a[0], b[0])
    for pa, pb in zip(a[1], b[1]):
        test.assertEqual(len(pa), len(pb))
        for x, y in zip(pa, pb):
            test.assertTrue(torch.equal(x, y))


class ModuleClassesTest(unittest.TestCase):
    """Every torch.nn module class."""

    @classmethod
    def tearDownClass(cls):
        for line in COVERAGE.get("modules", []):
            print(line)

    def test_every_class_is_covered_or_named(self):
        """A class torch.nn gains (a newer torch) fails here until it is given a case or a reason."""
        lines = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, cls in sorted(module_classes().items()):
                if name in WITH_PARAMETERS:
                    continue
                if name in NO_TRAINING:
                    lines.append("  skipped (training) {}: {}".format(name, NO_TRAINING[name][1]))
                    continue
                with self.subTest(module=name):
                    module = build_without_parameters(name, cls)
                    self.assertEqual(list(module.parameters()), [], "{} has parameters: give it a case".format(name))
        without = [n for n in module_classes() if n not in WITH_PARAMETERS and n not in NO_TRAINING]
        COVERAGE["modules"] = (["module classes of torch {}: {} with parameters trained, {} skipped for training, "
                                "{} without parameters".format(torch.__version__, len(WITH_PARAMETERS),
                                                               len(NO_TRAINING), len(without))] + lines)

    def test_training_is_bit_identical_and_every_figure_is_autograds(self):
        cases = {**WITH_PARAMETERS, **VARIANTS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, case in sorted(cases.items()):
                with self.subTest(module=name):
                    conforms(self, case[0], lambda: module_loss(case[1]))

    def test_pickle_save_deepcopy_and_script_behave_as_without_gradflow(self):
        makers = {name: case[0] for name, case in {**WITH_PARAMETERS, **VARIANTS}.items()}
        makers.update({name: entry[0] for name, entry in NO_TRAINING.items()})
        operations = {"torch.save": save_load, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
                      "deepcopy": copy.deepcopy, "torch.jit.script": torch.jit.script}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, make in sorted(makers.items()):
                for op_name, op in operations.items():
                    with self.subTest(module=name, operation=op_name):
                        torch.manual_seed(0)
                        bare = outcome(lambda: op(make()))
                        torch.manual_seed(0)
                        model = make()
                        monitor = gradflow.Monitor(model)
                        watched = outcome(lambda: op(model))
                        self.assertEqual(bare[0], watched[0], watched)
                        if bare[0] == "raised":
                            self.assertEqual(bare[1], watched[1])
                        elif op_name != "torch.jit.script":
                            for a, b in zip(model.parameters(), watched[1].parameters()):
                                lazy = nn.parameter.is_lazy(a)
                                self.assertEqual(lazy, nn.parameter.is_lazy(b))
                                self.assertTrue(lazy or torch.equal(a, b))
                        monitor.detach()

    def test_a_copy_records_nothing_unless_attached(self):
        for op in (save_load, copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
            with self.subTest(operation=op):
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
                monitor = gradflow.Monitor(model)
                loss = model(torch.randn(3, 4)).sum()
                monitor.watch(loss)
                loss.backward()
                before = monitor.trace_frame()
                twin = op(model)
                twin(torch.randn(3, 4)).sum().backward()
                after = monitor.trace_frame()
                self.assertEqual(list(before["name"]), list(after["name"]))
                self.assertEqual(list(before["grad_norm"]), list(after["grad_norm"]))
                own = gradflow.Monitor(twin)
                loss = twin(torch.randn(3, 4)).sum()
                own.watch(loss)
                loss.backward()
                self.assertEqual(sorted(set(own.trace_frame()["name"])), sorted(set(after["name"])))


def optimizer_case(name, cls):
    """A model and an optimizer of class `cls` for it (SparseAdam needs sparse gradients, Muon matrices)."""
    if name == "SparseAdam":
        model = nn.Embedding(10, 4, sparse=True)
        return model, cls(model.parameters(), lr=0.1), lambda g: torch.randint(0, 10, (3, 5), generator=g)
    # Muon orthogonalises matrices: it takes 2-D parameters only.
    bias = name != "Muon"
    model = nn.Sequential(nn.Linear(4, 8, bias=bias), nn.Tanh(), nn.Linear(8, 2, bias=bias))
    extra = {"lr": 0.05} if name == "SGD" else {}
    if name == "LBFGS":
        extra = {"lr": 0.5, "max_iter": 3}
    return model, cls(model.parameters(), **extra), lambda g: torch.randn(6, 4, generator=g)


def train_with_optimizer(name, cls, monitored, closure_step):
    """Three steps, each optimizer.step() or optimizer.step(closure) (LBFGS: always the closure);
    returns the parameters after each, the figures of the gradient each evaluation produced and
    each step without closure applied, the Monitor's frame, and every warning raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params, produced, applied, frame = _train_with_optimizer(name, cls, monitored, closure_step)
    return params, produced, applied, frame, [str(w.message) for w in caught]


def _train_with_optimizer(name, cls, monitored, closure_step):
    torch.manual_seed(0)
    model, opt, inputs = optimizer_case(name, cls)
    monitor = gradflow.Monitor(model, optimizer=opt) if monitored else None
    g = torch.Generator().manual_seed(1)
    params, produced, applied = [], [], []

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        if monitor:
            monitor.watch(loss)
        loss.backward()
        produced.append({n: stats(p.grad) for n, p in model.named_parameters()})
        return loss

    for _ in range(3):
        x = inputs(g)
        if name == "LBFGS" or closure_step:
            opt.step(closure)
        else:
            closure()
            applied.append({n: stats(p.grad) for n, p in model.named_parameters()})
            opt.step()
        params.append([p.detach().clone() for p in model.parameters()])
    frame = monitor.trace_frame() if monitor else None
    if monitor:
        monitor.detach()
    return params, produced, applied, frame


class OptimizersTest(unittest.TestCase):
    """Every torch.optim optimizer, attached to the Monitor (optimizer=)."""

    def test_every_optimizer_trains_bit_identically_and_its_applied_gradient_is_recorded(self):
        names = sorted(optimizer_classes())
        for name, closure_step in [(n, c) for n in names for c in (False, True) if n != "LBFGS" or c]:
            cls = optimizer_classes()[name]
            with self.subTest(optimizer=name, closure=closure_step):
                bare = train_with_optimizer(name, cls, False, closure_step)
                params, produced, applied, frame, caught = train_with_optimizer(name, cls, True, closure_step)
                self.assertEqual(caught, bare[4])  # no warning of gradflow's own
                for a, b in zip(bare[0], params):
                    for x, y in zip(a, b):
                        self.assertTrue(torch.equal(x, y))
                steps = sorted(set(int(s) for s in frame["step"]))
                self.assertEqual(len(steps), len(produced))  # one record per backward (LBFGS: per evaluation)
                for step, truth in zip(steps, produced):
                    rows = rows_of(frame, step)
                    for n, figures in truth.items():
                        self.assertTrue(close(rows[n]["grad_norm"], figures["grad_norm"]), (name, step, n))
                for step, truth in zip(steps, applied):
                    rows = rows_of(frame, step, "applied")
                    for n, figures in truth.items():
                        self.assertTrue(close(rows[n]["grad_norm"], figures["grad_norm"]), (name, step, n))
        print("\noptimizers of torch {}: {} passed, stepped with and without a closure ({})".format(
            torch.__version__, len(names), ", ".join(names)))


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def mse(dtype=torch.float32):
    def loss_of(model, g):
        return model(torch.randn(6, 4, generator=g).to(dtype)).square().mean(), None
    return loss_of


class Block(nn.Module):
    """A residual block, checkpointed or not."""

    def __init__(self):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, h):
        return h + self.fc2(torch.tanh(self.fc1(self.norm(h))))


class Checkpointed(nn.Module):
    """Embedding, residual blocks, head; `mode` none, reentrant, non_reentrant or sequential
    (torch.utils.checkpoint.checkpoint_sequential over the blocks)."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.emb = nn.Embedding(12, 8)
        self.blocks = nn.Sequential(*[Block() for _ in range(4)])
        self.head = nn.Linear(8, 12)

    def forward(self, x):
        h = self.emb(x)
        if self.mode == "sequential":
            h = checkpoint_sequential(self.blocks, 2, h)
        else:
            for block in self.blocks:
                if self.mode == "none":
                    h = block(h)
                else:
                    h = checkpoint(block, h, use_reentrant=self.mode == "reentrant")
        return self.head(h)


def tokens(model, g):
    x = torch.randint(0, 12, (6, 5), generator=g)
    return nn.functional.cross_entropy(model(x).reshape(-1, 12), x.reshape(-1)), None


class Symmetric(nn.Module):
    def forward(self, w):
        return w.triu() + w.triu(1).transpose(0, 1)


def parametrized(kind):
    def make():
        model = mlp()
        if kind == "weight_norm":
            nn.utils.weight_norm(model[0])
        elif kind == "spectral_norm":
            nn.utils.parametrizations.spectral_norm(model[0])
        else:
            nn.utils.parametrize.register_parametrization(model[2], "weight", Symmetric())
        return model
    return make


def functional_call():
    from torch.nn.utils import stateless
    return getattr(torch.func, "functional_call", None) if hasattr(torch, "func") else stateless.functional_call


def fast_weights(model, g):
    """One inner step on fast weights (MAML): the outer loss reaches the parameters through them."""
    call = functional_call()
    params = dict(model.named_parameters())
    inner = call(model, params, (torch.randn(6, 4, generator=g),)).square().mean()
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    fast = {n: p - 0.1 * gr for (n, p), gr in zip(params.items(), grads)}
    return call(model, fast, (torch.randn(6, 4, generator=g),)).square().mean(), None


def gradient_penalty(model, g):
    x = torch.randn(6, 4, generator=g, requires_grad=True)
    out = model(x)
    penalty = torch.autograd.grad(out.sum(), x, create_graph=True)[0].square().mean()
    return out.square().mean() + penalty, None


def bfloat16_autocast(model, g):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(6, 4, generator=g))
    return out.float().square().mean(), None


def state_dict_reload():
    saved = {}

    def loss_of(model, g):
        if not saved:
            saved.update(copy.deepcopy(model.state_dict()))
        else:
            model.load_state_dict(saved)  # back to the first step's weights, in place
        return model(torch.randn(6, 4, generator=g)).square().mean(), None
    return loss_of


def dtype_change():
    def loss_of(model, g):
        x = torch.randn(6, 4, generator=g)
        if loss_of.calls == 1:
            model.double()  # a new accumulator for every parameter
        loss_of.calls += 1
        return model(x.to(next(model.parameters()).dtype)).square().mean(), None
    loss_of.calls = 0
    return loss_of


def sparse_model():
    return nn.Sequential(nn.Embedding(20, 6, sparse=True), nn.Linear(6, 3))


def sparse_optimizers(model):
    """SparseAdam for the sparse embedding, Adam for the rest, stepped as one."""
    class Both:
        def __init__(self):
            self.opts = [torch.optim.SparseAdam(model[0].parameters(), lr=0.1),
                         torch.optim.Adam(model[1].parameters(), lr=0.1)]

        def step(self):
            for o in self.opts:
                o.step()

        def zero_grad(self):
            for o in self.opts:
                o.zero_grad()
    return Both()


def sparse_tokens(model, g):
    return model(torch.randint(0, 20, (4, 3), generator=g)).square().mean(), None


def run_json(frame_dir):
    import json
    with open(os.path.join(frame_dir, "run.json")) as f:
        return json.load(f)


class OperationsTest(unittest.TestCase):
    """What programs do to a model, with a Monitor attached: training stays bit-identical and every
    recorded figure is autograd's own."""

    def test_each_operation_conforms(self):
        cases = {
            "state_dict / load_state_dict": (mlp, state_dict_reload, {}),
            "model.double() between steps": (mlp, dtype_change, {}),
            "float64": (lambda: mlp().double(), lambda: mse(torch.float64), {}),
            "autocast bfloat16 (CPU)": (mlp, lambda: bfloat16_autocast, {}),
            "autograd.grad(create_graph=True) before the watched backward": (mlp, lambda: gradient_penalty, {}),
            "functional_call on fast weights": (mlp, lambda: fast_weights, {}),
            "sparse gradients (SparseAdam)": (sparse_model, lambda: sparse_tokens, {"optimizer": sparse_optimizers}),
            "weight_norm": (parametrized("weight_norm"), mse, {}),
            "parametrizations.spectral_norm": (parametrized("spectral_norm"), mse, {}),
            "parametrize.register_parametrization": (parametrized("custom"), mse, {}),
            # torch 2.x: the first training of a scripted type in a process differs from later ones by
            # an ulp (its graph executor's first plan), gradflow or not.
            "torch.jit.script": (lambda: torch.jit.script(mlp()), mse, {"truth_outputs": False, "warm_up": True}),
            "checkpoint (reentrant)": (lambda: Checkpointed("reentrant"), lambda: tokens, {}),
            "checkpoint (non-reentrant)": (lambda: Checkpointed("non_reentrant"), lambda: tokens, {}),
            "checkpoint_sequential": (lambda: Checkpointed("sequential"), lambda: tokens, {}),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, (make, new_loss, kwargs) in cases.items():
                with self.subTest(operation=name):
                    conforms(self, make, new_loss, **kwargs)
        print("\noperations: {} conform ({})".format(len(cases), "; ".join(cases)))

    def test_copies_of_parametrized_models_behave_as_without_gradflow(self):
        operations = {"torch.save": save_load, "deepcopy": copy.deepcopy}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for kind in ("weight_norm", "spectral_norm", "custom"):
                for op_name, op in operations.items():
                    with self.subTest(parametrization=kind, operation=op_name):
                        bare = outcome(lambda: op(parametrized(kind)()))
                        model = parametrized(kind)()
                        monitor = gradflow.Monitor(model)
                        watched = outcome(lambda: op(model))
                        self.assertEqual(bare[0], watched[0], watched)
                        if bare[0] == "raised":
                            self.assertEqual(bare[1], watched[1])
                        monitor.detach()

    def test_a_computed_weight_is_part_of_its_module_never_a_layer(self):
        for kind in ("spectral_norm", "custom"):
            with self.subTest(parametrization=kind):
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh(), nn.Linear(8, 8, bias=False), nn.Tanh(),
                                      nn.Linear(8, 2))
                if kind == "spectral_norm":
                    nn.utils.parametrizations.spectral_norm(model[0])
                else:
                    nn.utils.parametrize.register_parametrization(model[2], "weight", Symmetric())
                monitor = gradflow.Monitor(model)
                loss = model(torch.randn(6, 4)).square().mean()
                monitor.watch(loss)
                loss.backward()
                frame = monitor.trace_frame()
                kinds = {}
                for name, k in zip(frame["name"], frame["kind"]):
                    kinds.setdefault(str(k), set()).add(str(name))
                self.assertEqual(kinds["activation"], {"0", "2", "4"})  # the modules, parametrized or not
                self.assertTrue(any(".parametrizations.weight.original" in n for n in kinds["parameter"]))

    def test_a_traced_model_is_traced_as_without_gradflow(self):
        x = torch.randn(3, 4)
        torch.manual_seed(0)
        bare = torch.jit.trace(mlp(), x)
        torch.manual_seed(0)
        model = mlp()
        monitor = gradflow.Monitor(model)
        traced = torch.jit.trace(model, x)
        self.assertEqual(bare.code, traced.code)
        self.assertEqual(monitor.steps, 0)  # tracing runs the forward to record it, not to train

    def test_a_checkpointed_model_reads_as_its_twin_without_checkpointing(self):
        """Steps, layer outputs, applied gradients, the model's graph, traits and findings."""
        def record(mode, out):
            torch.manual_seed(0)
            model = Checkpointed(mode)
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            monitor = gradflow.Monitor(model, optimizer=opt)
            g = torch.Generator().manual_seed(1)
            for _ in range(6):
                loss = tokens(model, g)[0]
                monitor.watch(loss)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                opt.step()
                opt.zero_grad()
            findings = gradflow.save_report(monitor, out)
            frame = monitor.trace_frame()
            return frame, [(f.kind, f.where, f.message) for f in findings], run_json(out)

        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin, twin_findings, twin_run = record("none", os.path.join(tmp, "none"))
            for mode in ("reentrant", "non_reentrant", "sequential"):
                with self.subTest(mode=mode):
                    frame, findings, run = record(mode, os.path.join(tmp, mode))
                    for column in ("step", "name", "gradient", "grad_norm", "grad_max_abs", "loss"):
                        self.assertEqual(list(map(str, frame[column])), list(map(str, twin[column])), column)
                    self.assertIn("applied", set(map(str, frame["gradient"])))
                    self.assertEqual(findings, twin_findings)
                    self.assertEqual(run["trace"]["series"], twin_run["trace"]["series"])
                    for key in ("traits", "summary", "findings"):
                        self.assertEqual(run.get(key), twin_run.get(key), key)


def run_program(method, out, workers, mode):
    import json
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, os.path.join(here, "multiprocess_program.py"), method, out, str(workers), mode],
                       capture_output=True, text=True, timeout=120, env=env, start_new_session=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


class ProcessesTest(unittest.TestCase):
    """torch.multiprocessing (every start method), share_memory() and the out= folder."""

    def test_hogwild_trains_as_without_gradflow_and_the_parent_says_it_recorded_nothing(self):
        import json
        with tempfile.TemporaryDirectory() as tmp:
            for method in ("fork", "spawn", "forkserver"):
                with self.subTest(method=method):
                    bare, _ = run_program(method, os.path.join(tmp, method + "-bare"), 1, "bare")
                    out = os.path.join(tmp, method)
                    watched, stderr = run_program(method, out, 1, "parent")
                    self.assertEqual(bare["exit_codes"], [0])
                    self.assertEqual(watched["exit_codes"], [0])
                    self.assertEqual(bare["params"], watched["params"])
                    self.assertEqual([f["kind"] for f in watched["findings"]], ["not_recorded"])
                    self.assertIn("parameters changed", watched["findings"][0]["message"])
                    with open(os.path.join(out, "trace.jsonl")) as f:
                        lines = [json.loads(line) for line in f]
                    self.assertEqual(len(lines), 2)  # the parent's header and end: no worker wrote to it
                    self.assertNotIn("step", lines[1])
                    if method == "fork":
                        self.assertIn("inherited a Monitor", stderr)

    def test_each_worker_records_its_own_steps_in_its_own_folder(self):
        with tempfile.TemporaryDirectory() as tmp:
            for method in ("fork", "spawn"):
                with self.subTest(method=method):
                    out = os.path.join(tmp, method)
                    result, _ = run_program(method, out, 2, "workers")
                    self.assertEqual(result["exit_codes"], [0, 0])
                    recorders = set()
                    for rank in range(2):
                        folder = os.path.join(out, "worker-{}".format(rank))
                        run = run_json(folder)
                        with open(os.path.join(folder, "truth.json")) as f:
                            truth = __import__("json").load(f)
                        series = [s["name"] for s in run["trace"]["series"]]
                        self.assertEqual(len(run["trace"]["steps"]), len(truth))
                        # Each report says which process recorded it: the worker's own.
                        with open(os.path.join(folder, "report.md")) as f:
                            self.assertIn("Recorded by process {}.".format(run["trace"]["process_id"]), f.read())
                        recorders.add(run["trace"]["process_id"])
                        for step, expected in zip(run["trace"]["steps"], truth):
                            for name, norm in expected.items():
                                record = next(r for r in step["records"] if series[r["series"]] == name)
                                self.assertTrue(close(record["norm"], norm, 1e-9), (rank, name, record["norm"], norm))
                    self.assertEqual(len(recorders), 2)

    def test_a_second_process_cannot_stream_to_a_live_recording(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "run")
            monitor = gradflow.Monitor(mlp(), out=out)
            code = textwrap.dedent("""
                import sys, torch.nn as nn, gradflow
                try:
                    gradflow.Monitor(nn.Linear(2, 2), out=sys.argv[1], force=True)
                except gradflow.UsageError as e:
                    print(e)
            """)
            r = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=60)
            self.assertIn("is being recorded by another live process (process {})".format(os.getpid()), r.stdout)
            self.assertIn("out=", r.stdout)
            del monitor
            import gc
            gc.collect()
            r = subprocess.run([sys.executable, "-c", code.replace("print(e)", "print(e)\nelse:\n    print('free')"), out],
                               capture_output=True, text=True, timeout=60)
            self.assertIn("free", r.stdout)

    def test_a_forked_child_neither_records_nor_reports_for_its_parent(self):
        code = textwrap.dedent("""
            import os, sys, torch, torch.nn as nn, gradflow
            model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
            monitor = gradflow.Monitor(model, out=sys.argv[1])
            loss = model(torch.randn(3, 4)).sum()
            monitor.watch(loss)
            loss.backward()
            pid = os.fork()
            if pid == 0:
                loss = model(torch.randn(3, 4)).sum()
                monitor.watch(loss)
                loss.backward()
                try:
                    gradflow.save_report(monitor, sys.argv[1] + "-child")
                except gradflow.UsageError as e:
                    print(e, flush=True)
                os._exit(0)
            os.waitpid(pid, 0)
            print("steps", monitor.steps, flush=True)
        """)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "run")
            r = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=60)
            self.assertIn("this process inherited its Monitor through fork()", r.stdout)
            self.assertIn("steps 1", r.stdout)
            self.assertEqual(r.stderr.count("inherited a Monitor from the process that created it"), 1, r.stderr)
            self.assertFalse(os.path.exists(out + "-child"))
