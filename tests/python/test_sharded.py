"""Parameters held in parts across ranks (DTensor): FSDP2's fully_shard and tensor parallelism
(parallelize_module) on two Gloo ranks over loopback. Every recorded figure is of the whole
gradient and equals a one-process run of the same model and batch; recording adds one collective
per recorded step and none on the others; a replicated parameter counts once; a NaN in one rank's
part is named with that rank and its step; training is bit-identical with and without gradflow."""
import json
import math
import os
import sys
import tempfile
import unittest

import torch
import torch.distributed as dist
import torch.nn as nn

import gradflow
from ranks import rank_results, write_rank_result

try:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    HAS_DTENSOR = dist.is_available()
except ImportError:
    HAS_DTENSOR = False

WORLD = 2
STEPS = 6
EVERY = 2           # steps 0, 2, 4 recorded
NAN_STEP = 2
BATCH = 8           # the global batch; FSDP gives each rank its half, tensor parallelism all of it
CLIP = 0.5
TOLERANCE = 1e-6    # float32 against the one-process run (sums in another order)


def make_model():
    torch.manual_seed(7)
    # 3 outputs over 2 ranks: FSDP's parts of the last layer are uneven (2 rows and 1).
    return nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 3))


def batches():
    g = torch.Generator().manual_seed(11)
    return [(torch.randn(BATCH, 12, generator=g), torch.randn(BATCH, 3, generator=g)) for _ in range(STEPS)]


def shard_of(x, scheme, rank):
    """What rank `rank` trains on: its half of the batch (data parallel), or all of it."""
    if scheme != "fsdp":
        return x
    half = x.shape[0] // WORLD
    return x[rank * half:(rank + 1) * half]


def full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def parallelize(model, scheme, mesh):
    if scheme == "fsdp":
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        # Layer 0 column-wise (weight and bias sharded), layer 2 row-wise (its bias replicated),
        # layer 4 left whole on every rank.
        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    return model


# ---- every collective a program can start, counted where it enters torch.distributed ----

def _collective_names(module):
    starts = ("all_", "reduce", "broadcast", "barrier", "gather", "scatter", "send", "recv", "isend", "irecv",
              "monitored_barrier", "batch_isend_irecv", "permute_tensor")
    return [n for n in dir(module) if n.startswith(starts) and callable(getattr(module, n))
            and not isinstance(getattr(module, n), type)]


class CollectiveCounter:
    """Counts the outermost calls of every collective function of torch.distributed and of its
    functional collectives (which DTensor redistributes through), by patching the modules."""

    def __init__(self):
        import torch.distributed._functional_collectives as funcol
        self.calls = 0
        self.depth = 0
        self.patched = []
        for module in (dist, funcol):
            for name in _collective_names(module):
                original = getattr(module, name)
                setattr(module, name, self._counting(original))
                self.patched.append((module, name, original))

    def _counting(self, fn):
        def counted(*args, **kwargs):
            self.calls += self.depth == 0
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
        return counted

    def restore(self):
        for module, name, original in self.patched:
            setattr(module, name, original)


def train(scheme, rank, mesh, monitored, counter, nan=False, attach_optimizer=True, update_norms=None):
    """One run; returns (model, monitor, collectives per step, produced and applied gradients of
    each step as whole tensors, read the way the program reads them)."""
    model = parallelize(make_model(), scheme, mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if nan:
        first = model[0].weight

        def poison(p):
            if rank == 1 and step[0] == NAN_STEP:
                p.grad.to_local().view(-1)[0] = math.nan
        first.register_post_accumulate_grad_hook(poison)
    monitor = gradflow.Monitor(model, optimizer=opt if attach_optimizer else None, every=1 if nan else EVERY,
                               update_norms=attach_optimizer if update_norms is None else update_norms) if monitored else None
    calls, produced, applied = [], [], []
    step = [0]
    for i, (x, y) in enumerate(batches()):
        step[0] = i
        before = counter.calls
        loss = nn.functional.mse_loss(model(shard_of(x, scheme, rank)), shard_of(y, scheme, rank))
        if monitor:
            monitor.watch(loss)
        loss.backward()
        after_backward = counter.calls
        produced.append({n: full(p.grad).detach().double().clone() for n, p in model.named_parameters()})
        clip_calls = counter.calls
        clip(model)
        clip_calls = counter.calls - clip_calls
        applied.append({n: full(p.grad).detach().double().clone() for n, p in model.named_parameters()})
        # (Reading the whole gradients above and clipping are collectives of the test's own.)
        reads = counter.calls - after_backward - clip_calls
        opt.step()
        opt.zero_grad()
        calls.append(counter.calls - before - reads)
    return model, monitor, calls, produced, applied


def clip(model):
    """Scales the gradient to norm CLIP at most, as clip_grad_norm_ does (which cannot take a model
    with both DTensor and plain parameters), on the whole gradient."""
    grads = [p.grad for p in model.parameters()]
    total = torch.stack([full(g).double().pow(2).sum() for g in grads]).sum().sqrt().item()
    coef = min(1.0, CLIP / (total + 1e-6))
    for g in grads:
        g.mul_(coef)


LAYERS = ("0", "2", "4")
# The layer outputs each rank records as its own: under tensor parallelism layer 2's (row-wise)
# gradient reaches its DTensor output whole on every rank, no rank's share, and is not recorded.
OWN_OUTPUTS = {"fsdp": LAYERS, "tensor_parallel": ("0", "4")}


def reference():
    """The one-process run: the same model, the whole batch, the same clipping and optimizer; and
    the gradient that reaches each Linear's output."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    produced, applied, weights, updates, outputs = [], [], [], [], []
    kept = {}
    def keep(name):
        def hook(module, inputs, out):
            out.register_hook(lambda g: kept.__setitem__(name, g.double().clone()))
        return hook

    for name in LAYERS:
        model.get_submodule(name).register_forward_hook(keep(name))
    for x, y in batches():
        before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        weights.append(before)
        nn.functional.mse_loss(model(x), y).backward()
        outputs.append(dict(kept))
        produced.append({n: p.grad.double().clone() for n, p in model.named_parameters()})
        clip(model)
        applied.append({n: p.grad.double().clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
        updates.append({n: p.detach().double() - before[n] for n, p in model.named_parameters()})
    return model, produced, applied, weights, updates, outputs


def local_output_norms(scheme, rank, outputs):
    """The norm of each layer output's gradient as rank `rank`'s forward hooks see it: under FSDP
    its own half of the batch, of its own loss (the mean over half the rows: twice the one-process
    gradient there); under tensor parallelism its share of layer 0's features (column-wise), the
    whole of the others."""
    norms = {}
    for name, g in outputs.items():
        if scheme == "fsdp":
            g = 2 * shard_of(g, scheme, rank)
        elif name == "0":
            half = g.shape[1] // WORLD
            g = g[:, rank * half:(rank + 1) * half]
        norms[name] = g.norm().item()
    return norms


def recorded_outputs(monitor):
    """{(step, layer): norm} of the trace's layer-output rows."""
    frame = monitor.trace_frame()
    return {(int(frame["step"][i]), str(frame["name"][i])): float(frame["grad_norm"][i])
            for i in range(len(frame["step"])) if str(frame["kind"][i]) == "activation"}


def figures(g):
    """The figures gradflow records of a whole gradient, computed here from the tensor."""
    finite = g[torch.isfinite(g)]
    return {"grad_norm": finite.norm().item(), "grad_max_abs": finite.abs().max().item() if finite.numel() else 0.0,
            "grad_mean": finite.mean().item(), "zero_fraction": (g == 0).double().mean().item(),
            "nonfinite": float((~torch.isfinite(g)).sum().item()), "numel": float(g.numel())}


def recorded_rows(monitor):
    """{(gradient label, step, name, rank): row} of the trace's parameter rows."""
    frame = monitor.trace_frame()
    columns = ["grad_norm", "grad_max_abs", "grad_mean", "zero_fraction", "nonfinite", "numel", "weight_norm",
               "update_norm"]
    rows = {}
    for i in range(len(frame["step"])):
        if str(frame["kind"][i]) != "parameter":
            continue
        key = (str(frame["gradient"][i]), int(frame["step"][i]), str(frame["name"][i]), int(frame["rank"][i]))
        rows[key] = {c: float(frame[c][i]) for c in columns}
    return rows


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def worst_difference(rows, label, truth, steps, reference_weights=None, reference_updates=None):
    """The largest relative difference between the recorded rows and the whole tensors."""
    worst = 0.0
    for s in steps:
        for name, g in truth[s].items():
            row = rows.get((label, s, name, -1))
            if row is None:
                return math.inf
            for figure, value in figures(g).items():
                worst = max(worst, rel(row[figure], value) if figure not in ("zero_fraction", "grad_mean")
                            else abs(row[figure] - value))
            if reference_weights is not None:
                worst = max(worst, rel(row["weight_norm"], reference_weights[s][name].norm().item()))
                worst = max(worst, rel(row["update_norm"], reference_updates[s][name].norm().item()))
    return worst


def scheme_result(scheme, rank, mesh, truth):
    counter = CollectiveCounter()
    try:
        bare, _, bare_calls, _, _ = train(scheme, rank, mesh, False, counter)
        model, monitor, calls, produced, applied = train(scheme, rank, mesh, True, counter)
    finally:
        counter.restore()
    ref_model, ref_produced, ref_applied, ref_weights, ref_updates, ref_outputs = truth
    rows = recorded_rows(monitor)
    recorded = list(range(0, STEPS, EVERY))
    sharded = {n for n, p in model.named_parameters() if isinstance(p, DTensor)}
    parts = {n: sorted(r for (label, s, name, r) in rows if label == "local" and s == 0 and name == n) for n in sharded}
    shards = {info["name"]: info.get("shards", 0) for info in monitor_series(monitor)}
    outputs = recorded_outputs(monitor)
    output_difference = max(rel(outputs.get((s, name), math.inf), norm) for s in recorded
                            for name, norm in local_output_norms(scheme, rank, ref_outputs[s]).items()
                            if name in OWN_OUTPUTS[scheme])
    with tempfile.TemporaryDirectory() as folder:
        gradflow.save_report(monitor, folder)
        report = open(os.path.join(folder, "report.md")).read() if rank == 0 else ""
    return {
        "identical": all(torch.equal(full(a).detach(), full(b).detach())
                         for a, b in zip(model.parameters(), bare.parameters())),
        "matches_one_process": max((full(p).detach() - q.detach()).abs().max().item()
                                   for p, q in zip(model.parameters(), ref_model.parameters())),
        "extra_collectives": [c - b for c, b in zip(calls, bare_calls)],
        "produced_vs_one_process": worst_difference(rows, "produced", ref_produced, recorded, ref_weights, ref_updates),
        "applied_vs_one_process": worst_difference(rows, "applied", ref_applied, recorded),
        "produced_vs_program": worst_difference(rows, "produced", produced, recorded),
        "applied_vs_program": worst_difference(rows, "applied", applied, recorded),
        "unrecorded_steps": sorted({s for (_, s, _, _) in rows} - set(recorded)),
        "sharded": sorted(sharded),
        "parts": parts,
        "shards": {n: shards.get(n, 0) for n, _ in model.named_parameters()},
        "outputs_vs_one_process": output_difference,
        "output_series": sorted({name for _, name in outputs}),
        "report_names_unrecorded": "No layer-output series for 2: " in report,
    }


def monitor_series(monitor):
    with tempfile.TemporaryDirectory() as folder:
        monitor.save_json(os.path.join(folder, "trace.json"))
        with open(os.path.join(folder, "trace.json")) as fh:
            return json.load(fh)["series"]


def without_optimizer_result(rank, mesh, truth):
    """The Monitor not told of the optimizer: the parts are combined at the end of each recorded
    step's backward, or with update norms when the next step begins; the report is written by
    rank 0 alone."""
    counter = CollectiveCounter()
    try:
        _, _, bare_calls, _, _ = train("fsdp", rank, mesh, False, counter)
        model, monitor, calls, produced, _ = train("fsdp", rank, mesh, True, counter, attach_optimizer=False)
        _, with_updates, update_calls, _, _ = train("fsdp", rank, mesh, True, counter, attach_optimizer=False,
                                                    update_norms=True)
    finally:
        counter.restore()
    update_rows = recorded_rows(with_updates)
    rows = recorded_rows(monitor)
    recorded = list(range(0, STEPS, EVERY))
    findings = None
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            findings = [f.kind for f in gradflow.save_report(monitor, folder)]
    recorded_then_closed = list(range(0, STEPS - 1, EVERY))  # (the last step stays open)
    return {"extra_collectives": [c - b for c, b in zip(calls, bare_calls)],
            "extra_collectives_with_updates": [c - b for c, b in zip(update_calls, bare_calls)],
            "updates_vs_one_process": max(rel(update_rows[("produced", s, n, -1)]["update_norm"], u.norm().item())
                                          for s in recorded_then_closed for n, u in truth[4][s].items()),
            "produced_vs_one_process": worst_difference(rows, "produced", truth[1], recorded),
            "applied_rows": sum(1 for key in rows if key[0] == "applied"), "findings": findings}


def nan_result(rank, mesh):
    counter = CollectiveCounter()
    try:
        model, monitor, _, _, _ = train("fsdp", rank, mesh, True, counter, nan=True)
    finally:
        counter.restore()
    rows = recorded_rows(monitor)
    with tempfile.TemporaryDirectory() as folder:
        findings = gradflow.save_report(monitor, folder)
        report = open(os.path.join(folder, "report.md")).read() if rank == 0 else ""
    non_finite = [f.message for f in findings if f.kind == "non_finite"]
    local = {r: rows[("local", NAN_STEP, "0.weight", r)]["nonfinite"] for r in range(WORLD)}
    return {"messages": non_finite, "local_nonfinite": local,
            "report_says_sharded": "6 of the 6 parameters are held in parts across ranks" in report,
            "whole_nonfinite": rows[("produced", NAN_STEP, "0.weight", -1)]["nonfinite"],
            "before": rows[("produced", NAN_STEP - 1, "0.weight", -1)]["nonfinite"]}


def rank_main(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    truth = reference()
    results = {scheme: scheme_result(scheme, rank, mesh, truth) for scheme in ("fsdp", "tensor_parallel")}
    results["without_optimizer"] = without_optimizer_result(rank, mesh, truth)
    results["nan"] = nan_result(rank, mesh)
    write_rank_result(out, rank, results)
    dist.barrier()
    dist.destroy_process_group()


@unittest.skipUnless(HAS_DTENSOR, "torch %s has no DTensor or fully_shard" % torch.__version__)
class ShardedParametersTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.results = rank_results(unittest.TestCase(), __file__, WORLD, timeout=240)

    def each(self, scheme):
        """Each rank's result of `scheme` (both ranks record the whole figures)."""
        return [res[scheme] for res in self.results]

    def test_fully_shard_on_cpu_records_the_whole_gradient_of_every_parameter(self):
        for got in self.each("fsdp"):
            self.assertEqual(got["sharded"], ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"])
            self.assertLess(got["produced_vs_one_process"], TOLERANCE)
            self.assertLess(got["applied_vs_one_process"], TOLERANCE)
            self.assertLess(got["produced_vs_program"], TOLERANCE)
            self.assertLess(got["applied_vs_program"], TOLERANCE)
            # Every part's figures, uneven ones included (4.weight: 2 rows and 1).
            self.assertEqual(got["parts"]["4.weight"], [0, 1])
            self.assertEqual(got["shards"]["4.weight"], 2)

    def test_tensor_parallel_counts_a_replicated_parameter_once(self):
        for got in self.each("tensor_parallel"):
            self.assertEqual(got["sharded"], ["0.bias", "0.weight", "2.bias", "2.weight"])
            self.assertLess(got["produced_vs_one_process"], TOLERANCE)
            self.assertLess(got["applied_vs_one_process"], TOLERANCE)
            self.assertEqual(got["shards"]["2.bias"], 1)   # replicated: one rank's copy counts
            self.assertEqual(got["shards"]["2.weight"], 2)
            self.assertEqual(got["shards"]["4.weight"], 0)  # whole on every rank
            self.assertEqual(got["parts"]["2.bias"], [0, 1])

    def test_layer_outputs_are_each_ranks_own(self):
        for scheme in ("fsdp", "tensor_parallel"):
            for got in self.each(scheme):
                self.assertEqual(got["output_series"], list(OWN_OUTPUTS[scheme]))
                self.assertLess(got["outputs_vs_one_process"], TOLERANCE)
        self.assertTrue(self.results[0]["tensor_parallel"]["report_names_unrecorded"])

    def test_one_collective_per_recorded_step_and_none_on_the_others(self):
        for scheme in ("fsdp", "tensor_parallel"):
            for got in self.each(scheme):
                self.assertEqual(got["extra_collectives"], [1 if s % EVERY == 0 else 0 for s in range(STEPS)])
                self.assertEqual(got["unrecorded_steps"], [])

    def test_training_is_bit_identical_and_equals_the_one_process_run(self):
        for scheme in ("fsdp", "tensor_parallel"):
            for got in self.each(scheme):
                self.assertTrue(got["identical"], "training changed when gradflow was attached")
                self.assertLess(got["matches_one_process"], 1e-5)

    def test_without_the_optimizer_the_parts_are_combined_at_the_end_of_backward(self):
        for got in self.each("without_optimizer"):
            self.assertEqual(got["extra_collectives"], [1 if s % EVERY == 0 else 0 for s in range(STEPS)])
            self.assertLess(got["produced_vs_one_process"], TOLERANCE)
            self.assertEqual(got["applied_rows"], 0)
            # With update norms each recorded step's parts go together when the next step begins.
            self.assertEqual(got["extra_collectives_with_updates"], [1 if (s - 1) % EVERY == 0 else 0 for s in range(STEPS)])
            self.assertLess(got["updates_vs_one_process"], TOLERANCE)
        self.assertEqual(self.results[0]["without_optimizer"]["findings"], [])  # rank 0's report, alone: no hang

    def test_a_nan_in_one_ranks_part_is_named_with_its_rank_and_step(self):
        for rank, res in enumerate(self.results):
            got = res["nan"]
            self.assertEqual(got["before"], 0)
            self.assertEqual(got["whole_nonfinite"], 1)
            self.assertEqual(got["local_nonfinite"], {"0": 0, "1": 1})
            self.assertEqual(len(got["messages"]), 1, got["messages"])
            self.assertIn(f"0.weight at step {NAN_STEP} (in the part held by rank 1, of 2 ranks)", got["messages"][0])
        self.assertTrue(self.results[0]["nan"]["report_says_sharded"])  # rank 0 wrote the report


if __name__ == "__main__":
    if len(sys.argv) == 5:
        rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        unittest.main()
