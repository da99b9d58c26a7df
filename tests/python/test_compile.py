"""torch.compile: a Monitor attached before or after compiling records every parameter's produced
and applied gradient as the un-monitored compiled run's .grad holds them, trains bit-identically,
and adds no graph break, also under DistributedDataParallel in either wrapping order; layer
outputs inside a compiled graph are not seen by forward hooks, the report says so, and a step
run eagerly records them."""
import math
import os
import subprocess
import sys
import tempfile
import unittest
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn

import gradflow
from ranks import rank_results, write_rank_result

STEPS = 4
CLIP = 0.5
# AOTAutograd's backward, as inductor's, without compiling C++ kernels on a 2-core machine.
BACKEND = "aot_eager"
HAS_COMPILE = hasattr(torch, "compile") and hasattr(torch, "compiler")
# Every way a program compiles a model, with gradflow attached before or after.
ORDERS = ["monitor, then torch.compile(model)", "gradflow.Monitor(torch.compile(model))",
          "monitor, then model.compile()"]


def make_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def batches():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(STEPS)]


def compiled(model, order, attach):
    """The model compiled as `order` says, with `attach(module)` called where that order attaches
    a Monitor (None: no Monitor); returns (what the loop calls, the Monitor or None)."""
    if order.startswith("monitor, then"):
        monitor = attach(model)
        if order.endswith("model.compile()"):
            model.compile(backend=BACKEND)
            return model, monitor
        return torch.compile(model, backend=BACKEND), monitor
    net = torch.compile(model, backend=BACKEND)
    return net, attach(net)


def train(order, monitored):
    """Trains the compiled model with gradient clipping; returns the model, the Monitor (or None),
    what .grad held after backward and at the optimizer step, by step and name, the graph breaks
    and graphs dynamo counted, and the warnings raised."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net, monitor = compiled(model, order, (lambda m: gradflow.Monitor(m, optimizer=opt)) if monitored else (lambda m: None))
        produced, applied = [], []
        for x, y in batches():
            loss = nn.functional.mse_loss(net(x), y)
            if monitor is not None:
                monitor.watch(loss)
            loss.backward()
            produced.append({n: p.grad.double().norm().item() for n, p in model.named_parameters()})
            nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            applied.append({n: p.grad.double().norm().item() for n, p in model.named_parameters()})
            opt.step()
            opt.zero_grad()
    if monitor is not None:
        monitor.detach()  # what it recorded stays
    breaks = sum(counters["graph_break"].values())
    return {"model": model, "monitor": monitor, "produced": produced, "applied": applied, "breaks": breaks,
            "graphs": counters["stats"]["unique_graphs"], "warnings": [str(w.message) for w in caught]}


def recorded(monitor, kind="parameter"):
    """{(gradient label, step): {name: norm}} of the Monitor's steps, for one series kind."""
    frame = monitor.trace_frame()
    out = {}
    for step, name, k, label, norm in zip(frame["step"], frame["name"], frame["kind"], frame["gradient"],
                                          frame["grad_norm"]):
        if str(k) == kind:
            out.setdefault((str(label), int(step)), {})[str(name)] = float(norm)
    return out


@unittest.skipUnless(HAS_COMPILE, "torch %s has no torch.compile" % torch.__version__)
class CompileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bare = {order: train(order, monitored=False) for order in ORDERS}
        cls.watched = {order: train(order, monitored=True) for order in ORDERS}

    def test_graph_breaks_and_graphs_as_without_gradflow(self):
        for order in ORDERS:
            with self.subTest(order=order):
                self.assertGreater(self.bare[order]["graphs"], 0)
                self.assertEqual(self.watched[order]["breaks"], self.bare[order]["breaks"])
                self.assertEqual(self.watched[order]["graphs"], self.bare[order]["graphs"])

    def test_training_is_bit_identical(self):
        for order in ORDERS:
            with self.subTest(order=order):
                bare, watched = self.bare[order]["model"].state_dict(), self.watched[order]["model"].state_dict()
                self.assertEqual(list(bare), list(watched))
                for name in bare:
                    self.assertTrue(torch.equal(bare[name], watched[name]), name)

    def test_every_parameters_produced_and_applied_gradient_is_the_compiled_runs(self):
        for order in ORDERS:
            with self.subTest(order=order):
                rec = recorded(self.watched[order]["monitor"])
                names = [n for n, _ in make_model().named_parameters()]
                for label in ("produced", "applied"):
                    truth = self.bare[order][label]
                    for step in range(STEPS):
                        got = rec[(label, step)]
                        self.assertEqual(sorted(got), sorted(names))  # the eager names, no `_orig_mod.`
                        for name in names:
                            self.assertAlmostEqual(got[name], truth[step][name], delta=1e-6 * truth[step][name])
                # The clip changed the gradient: the two labels are not the same figure.
                self.assertNotAlmostEqual(sum(rec[("applied", 0)].values()), sum(rec[("produced", 0)].values()))

    def test_no_warning_of_gradflows_hook(self):
        for order in ORDERS:
            with self.subTest(order=order):
                ours = [w for w in self.watched[order]["warnings"] if "global hooks" in w]
                self.assertEqual(ours, [])

    def test_layer_outputs_inside_the_graph_are_reported_missing_and_an_eager_step_records_them(self):
        torch._dynamo.reset()
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        net, monitor = compiled(model, ORDERS[0], lambda m: gradflow.Monitor(m, optimizer=opt))
        eager_step = STEPS - 1  # the eager fallback: a step through the module, not its compiled wrapper
        for step, (x, y) in enumerate(batches()):
            loss = nn.functional.mse_loss((model if step == eager_step else net)(x), y)
            monitor.watch(loss)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step == eager_step - 1:
                with tempfile.TemporaryDirectory() as out:
                    gradflow.save_report(monitor, out, label="compiled")
                    with open(os.path.join(out, "report.md")) as f:
                        report = f.read()
        monitor.detach()
        self.assertIn("No layer-output series for 0, 2, 4", report)
        self.assertIn("inside a torch.compile graph", report)
        outputs = recorded(monitor, "activation")
        self.assertEqual(list(outputs), [("produced", eager_step)])
        self.assertEqual(sorted(outputs[("produced", eager_step)]), ["0", "2", "4"])


# The warnings filter, in a fresh interpreter: no other Monitor or global hook of the test process
# is alive there.
FILTER_PROGRAM = """
import sys, warnings, torch, gradflow
model = torch.nn.Linear(6, 3)
before = list(warnings.filters)
monitor = gradflow.Monitor(model)
added = len(warnings.filters) - len(before)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    monitor2 = gradflow.Monitor(model)  # puts the filter ahead of the program's again
    torch.compile(model, backend="aot_eager")(torch.randn(2, 6))
quiet = not any("global hooks" in str(w.message) for w in caught)
monitor2.detach()
monitor.detach()
restored = warnings.filters == before
handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
monitor = gradflow.Monitor(model)
with warnings.catch_warnings(record=True) as caught:
    torch.compile(model, backend="aot_eager")(torch.randn(2, 6))
kept = any("global hooks" in str(w.message) for w in caught)
print(added, quiet, restored, kept)
"""


@unittest.skipUnless(HAS_COMPILE, "torch %s has no torch.compile" % torch.__version__)
class WarningsFilterTest(unittest.TestCase):
    def test_gradflows_hook_raises_no_warning_and_detach_leaves_no_filter(self):
        r = subprocess.run([sys.executable, "-c", FILTER_PROGRAM], capture_output=True, text=True, timeout=240)
        self.assertEqual(r.returncode, 0, r.stderr)
        added, quiet, restored, kept = r.stdout.split()
        self.assertEqual(added, "1")        # one filter entry while gradflow's hook is there
        self.assertEqual(quiet, "True")     # torch's warning about it is not shown
        self.assertEqual(restored, "True")  # the last detach takes the entry away
        self.assertEqual(kept, "True")      # where the program hooks modules globally, torch's warning stays


# ---- DistributedDataParallel and torch.compile on two Gloo ranks ----

DDP_WRAPPINGS = ["torch.compile(DDP(model))", "DDP(torch.compile(model))", "Monitor(DDP(model)), then torch.compile"]


def ddp_compiled_train(rank, wrapping, monitored):
    """Trains on this rank's batches; returns the model, the Monitor (or None), the averaged .grad
    norms by step and name, and dynamo's graph breaks."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach = (lambda m: gradflow.Monitor(m, optimizer=opt)) if monitored else (lambda m: None)
    if wrapping == "torch.compile(DDP(model))":
        net = torch.compile(nn.parallel.DistributedDataParallel(model), backend=BACKEND)
        monitor = attach(net)
    elif wrapping == "DDP(torch.compile(model))":
        net = nn.parallel.DistributedDataParallel(torch.compile(model, backend=BACKEND))
        monitor = attach(net)
    else:
        ddp = nn.parallel.DistributedDataParallel(model)
        monitor = attach(ddp)
        net = torch.compile(ddp, backend=BACKEND)
    g = torch.Generator().manual_seed(10 + rank)
    averaged = []
    for _ in range(STEPS):
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
        loss = nn.functional.mse_loss(net(x), y)
        if monitor is not None:
            monitor.watch(loss)
        loss.backward()
        averaged.append({n: p.grad.double().norm().item() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
    if monitor is not None:
        monitor.detach()
    return model, monitor, averaged, sum(counters["graph_break"].values())


def ddp_rank_main(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}
    for wrapping in DDP_WRAPPINGS:
        bare, _, _, bare_breaks = ddp_compiled_train(rank, wrapping, False)
        model, monitor, averaged, breaks = ddp_compiled_train(rank, wrapping, True)
        produced = recorded(monitor)
        frame = monitor.trace_frame()
        local_ranks = sorted({int(r) for r, label in zip(frame["rank"], frame["gradient"]) if str(label) == "local"})
        worst = max(abs(produced[("produced", s)].get(n, math.inf) - averaged[s][n]) / averaged[s][n]
                    for s in range(STEPS) for n in averaged[s])
        results[wrapping] = {
            "identical": all(torch.equal(a, b) for a, b in zip(model.parameters(), bare.parameters())),
            "breaks": breaks, "bare_breaks": bare_breaks, "worst": worst, "local_ranks": local_ranks,
            "names": sorted(produced[("produced", 0)]), "eager_names": sorted(n for n, _ in model.named_parameters())}
    write_rank_result(out, rank, results)
    dist.barrier()
    dist.destroy_process_group()


@unittest.skipUnless(HAS_COMPILE, "torch %s has no torch.compile" % torch.__version__)
class DistributedCompileTest(unittest.TestCase):
    def test_the_averaged_gradient_under_ddp_and_compile_in_every_order(self):
        results = rank_results(self, __file__, 2, timeout=240)
        for r, res in enumerate(results):
            for wrapping in DDP_WRAPPINGS:
                with self.subTest(rank=r, wrapping=wrapping):
                    got = res[wrapping]
                    self.assertTrue(got["identical"], "training changed when gradflow was attached")
                    self.assertEqual(got["breaks"], got["bare_breaks"])
                    self.assertLess(got["worst"], 1e-9)
                    self.assertEqual(got["local_ranks"], [0, 1])  # every rank's local figures rode in DDP's allreduce
                    self.assertEqual(got["names"], got["eager_names"])


if __name__ == "__main__":
    if len(sys.argv) == 5:
        ddp_rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        unittest.main()
