"""Which gradient a record holds: the one backward produced and the one the optimizer applied
(clipping), one record per closure evaluation (LBFGS), the true gradient under loss scaling with
skipped steps, a manual update, and under DistributedDataParallel the averaged gradient with
every rank's local one, riding in DDP's own allreduce. Each figure is checked against p.grad
captured by the program itself, in float64, in the same run."""
import datetime
import json
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
from ranks import free_port, rank_results, write_rank_result

STEPS = 8


def make_model(seed=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))


def batches(n, seed=5, rows=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, 6, generator=g), torch.randn(rows, 2, generator=g)) for _ in range(n)]


def grads(model):
    return {n: p.grad.detach().double().clone() for n, p in model.named_parameters() if p.grad is not None}


def rows(monitor, gradient):
    """(step, name) -> the frame row's figures, for one kind of gradient."""
    f = monitor.trace_frame()
    out = {}
    for i in range(len(f["step"])):
        if str(f["gradient"][i]) == gradient:
            out[(int(f["step"][i]), str(f["name"][i]))] = {k: f[k][i] for k in f}
    return out


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


class ClippingTest(unittest.TestCase):
    def run_clipped(self, clip):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        monitor = gradflow.Monitor(model, optimizer=opt)
        produced, applied = [], []
        for x, y in batches(STEPS):
            loss = nn.functional.mse_loss(model(x), y)
            monitor.watch(loss)
            loss.backward()
            produced.append(grads(model))
            clip(model.parameters())
            applied.append(grads(model))
            opt.step()
            opt.zero_grad()
        return model, monitor, produced, applied

    def check(self, clip, expect_changed):
        model, monitor, produced, applied = self.run_clipped(clip)
        got_produced, got_applied = rows(monitor, "produced"), rows(monitor, "applied")
        changed = 0
        for step in range(STEPS):
            for name, _ in model.named_parameters():
                for truth, got in ((produced[step][name], got_produced), (applied[step][name], got_applied)):
                    row = got[(step, name)]
                    self.assertLess(rel(row["grad_norm"], truth.norm().item()), 1e-9, (step, name))
                    self.assertLess(rel(row["grad_max_abs"], truth.abs().max().item()), 1e-9, (step, name))
                self.assertEqual(got_applied[(step, name)]["optimizer_step"], step)
            changed += any(not torch.equal(produced[step][n], applied[step][n]) for n in produced[step])
        self.assertEqual(changed, expect_changed)
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "report")
            gradflow.save_report(monitor, out, label="clipped")
            with open(os.path.join(out, "summary.json")) as f:
                summary = json.load(f)["runs"][0]["summary"]
            self.assertEqual(summary["applied"]["changed_steps"], changed)
            factors = [math.sqrt(sum(a.square().sum().item() for a in applied[s].values())) /
                       math.sqrt(sum(p.square().sum().item() for p in produced[s].values())) for s in range(STEPS)]
            self.assertLess(rel(summary["applied"]["smallest_factor"], min(factors)), 1e-9)
            with open(os.path.join(out, "report.md")) as f:
                md = f.read()
            self.assertIn(f"changed the gradient on {changed} of {STEPS} steps", md)
            with open(os.path.join(out, "report.html")) as f:
                self.assertIn("applied by the optimizer", f.read())
        return produced, applied

    def test_clipping_by_norm_records_the_produced_and_the_applied_gradient(self):
        self.check(lambda ps: nn.utils.clip_grad_norm_(ps, 0.05), STEPS)

    def test_clipping_by_value_too(self):
        # clip_grad_value_ works through .data: the gradient's version counter does not move.
        self.check(lambda ps: nn.utils.clip_grad_value_(ps, 0.02), STEPS)

    def test_a_clip_that_never_bites_changes_no_step(self):
        self.check(lambda ps: nn.utils.clip_grad_norm_(ps, 1e9), 0)

    def test_a_learning_rate_scheduler_still_counts_the_steps(self):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        monitor = gradflow.Monitor(model, optimizer=opt)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for x, y in batches(4):
                loss = nn.functional.mse_loss(model(x), y)
                monitor.watch(loss)
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad()
        # The scheduler counts optimizer.step() through its own wrapper of it (torch 1.13 and 2.x keep
        # the count in different private fields) and warns when it sees none.
        self.assertEqual([str(w.message) for w in caught if "lr_scheduler.step()" in str(w.message)], [])
        self.assertAlmostEqual(opt.param_groups[0]["lr"], 0.125)
        self.assertEqual(sorted({s for s, _ in rows(monitor, "applied")}), [0, 1, 2, 3])


class ClosureTest(unittest.TestCase):
    def run_lbfgs(self, lr, steps=3):
        model = make_model()
        opt = torch.optim.LBFGS(model.parameters(), lr=lr, max_iter=6)
        monitor = gradflow.Monitor(model, optimizer=opt)
        x, y = batches(1)[0]
        evaluations = []

        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            monitor.watch(loss)
            loss.backward()
            evaluations.append((loss.item(), grads(model),
                                {n: p.detach().double().norm().item() for n, p in model.named_parameters()}))
            return loss

        returned = [opt.step(closure).item() for _ in range(steps)]
        return model, monitor, evaluations, returned

    def test_each_evaluation_is_a_record_with_its_own_gradient_loss_and_weights(self):
        model, monitor, evaluations, returned = self.run_lbfgs(lr=0.5)
        produced = rows(monitor, "produced")
        steps = sorted({s for s, _ in produced})
        self.assertEqual(len(steps), len(evaluations))
        self.assertGreater(len(evaluations), 3)
        for k, (loss, g, w) in enumerate(evaluations):
            for name in g:
                row = produced[(steps[k], name)]
                self.assertLess(rel(row["grad_norm"], g[name].norm().item()), 1e-9, (k, name))
                self.assertLess(rel(row["weight_norm"], w[name]), 1e-6, (k, name))
                self.assertLess(rel(row["loss"], loss), 1e-6, k)
        trace = self.trace(monitor)
        by_step = {}
        for st in trace["steps"]:
            by_step.setdefault(st["optimizer_step"], []).append(st)
        self.assertEqual(sorted(by_step), [0, 1, 2])
        for k, records in by_step.items():
            self.assertEqual([st["evaluation"] for st in records], list(range(len(records))))
            self.assertEqual([("step_loss" in st) for st in records], [False] * (len(records) - 1) + [True])
            self.assertLess(rel(records[-1]["step_loss"], returned[k]), 1e-6)

    def trace(self, monitor):
        with tempfile.TemporaryDirectory() as d:
            monitor.save_json(os.path.join(d, "t.json"))
            with open(os.path.join(d, "t.json")) as f:
                return json.load(f)

    def test_a_divergence_inside_one_step_is_found(self):
        model, monitor, evaluations, returned = self.run_lbfgs(lr=50.0, steps=2)
        losses = [e[0] for e in evaluations]
        self.assertTrue(any(not math.isfinite(v) or v > 1e3 * losses[0] for v in losses), losses)
        with tempfile.TemporaryDirectory() as d:
            kinds = {f.kind for f in gradflow.save_report(monitor, os.path.join(d, "r"))}
        self.assertTrue(kinds & {"unstable_loss", "non_finite", "exploding"}, kinds)


class HandScaler:
    """What torch.cuda.amp.GradScaler does, on the CPU: scale the loss, skip a step whose scaled
    gradient is not finite and halve the scale, unscale before the optimizer."""

    def __init__(self, scale):
        self.scale = scale

    def get_scale(self):
        return self.scale


class LossScalingTest(unittest.TestCase):
    def run_scaled(self, overflow_from, overflow_to, steps=STEPS):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = HandScaler(2.0 ** 12)
        monitor = gradflow.Monitor(model, optimizer=opt, grad_scaler=scaler)
        step = [0]
        first = next(model.parameters())
        first.register_hook(lambda g: g * math.inf if overflow_from <= step[0] < overflow_to else g)
        truth = []
        for i, (x, y) in enumerate(batches(steps)):
            step[0] = i
            loss = nn.functional.mse_loss(model(x), y)
            monitor.watch(loss)
            (loss * scaler.scale).backward()
            truth.append({n: g / scaler.scale for n, g in grads(model).items()})
            if any(not torch.isfinite(p.grad).all() for p in model.parameters()):
                scaler.scale /= 2
            else:
                for p in model.parameters():
                    p.grad.div_(scaler.scale)
                opt.step()
            opt.zero_grad()
        return model, monitor, truth

    def test_recorded_gradients_are_unscaled_and_a_skipped_step_is_marked(self):
        model, monitor, truth = self.run_scaled(3, 4)
        produced = rows(monitor, "produced")
        for step in range(STEPS):
            for name, g in truth[step].items():
                row = produced[(step, name)]
                self.assertEqual(bool(row["skipped"]), step == 3, step)
                self.assertEqual(row["loss_scale"], 2.0 ** 12 if step <= 3 else 2.0 ** 11)
                if step != 3 or name != "0.weight":
                    self.assertLess(rel(row["grad_norm"], g.norm().item()), 1e-9, (step, name))
        with tempfile.TemporaryDirectory() as d:
            monitor.save_json(os.path.join(d, "t.json"))
            with open(os.path.join(d, "t.json")) as f:
                skipped = [st for st in json.load(f)["steps"] if st.get("skipped")]
            self.assertEqual([(st["step"], st["loss_scale"], st["scale_after"]) for st in skipped],
                             [(3, 2.0 ** 12, 2.0 ** 11)])
            findings = gradflow.save_report(monitor, os.path.join(d, "r"))
        self.assertEqual([f.kind for f in findings if f.kind in ("non_finite", "exploding")], [])

    def test_skips_that_persist_are_a_finding(self):
        model, monitor, truth = self.run_scaled(2, 14, steps=16)  # 12 skips in a row
        with tempfile.TemporaryDirectory() as d:
            findings = gradflow.save_report(monitor, os.path.join(d, "r"))
        found = [f for f in findings if f.kind == "non_finite"]
        self.assertTrue(found, [f.kind for f in findings])
        self.assertIn("skipped", found[0].message)


class ManualUpdateTest(unittest.TestCase):
    def test_the_last_steps_update_is_measured_when_the_report_is_saved(self):
        model = make_model()
        monitor = gradflow.Monitor(model, update_norms=True)
        lr = 0.05
        updates = []
        for x, y in batches(4):
            model.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            monitor.watch(loss)
            loss.backward()
            with torch.no_grad():
                updates.append({n: (lr * p.grad).double().norm().item() for n, p in model.named_parameters()})
                for p in model.parameters():
                    p -= lr * p.grad
        with tempfile.TemporaryDirectory() as d:
            gradflow.save_report(monitor, os.path.join(d, "r"))
            with open(os.path.join(d, "r", "run.json")) as f:
                trace = json.load(f)["trace"]
        names = [s["name"] for s in trace["series"]]
        last = trace["steps"][-1]
        self.assertEqual(last["step"], 3)
        checked = 0
        for r in last["records"]:
            name = names[r["series"]]
            if name in updates[-1]:
                self.assertLess(rel(r["update_norm"], updates[-1][name]), 1e-6, name)
                checked += 1
        self.assertEqual(checked, len(updates[-1]))


# ---- patterns of public programs ----

class WordLanguageModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel: embedding, a 2-layer nn.LSTM, a decoder tied
    to the embedding; its loop clips the gradient at 0.25 between backward and the update."""

    def __init__(self, vocab=50, size=16):
        super().__init__()
        self.encoder = nn.Embedding(vocab, size)
        self.rnn = nn.LSTM(size, size, 2)
        self.decoder = nn.Linear(size, vocab)
        self.decoder.weight = self.encoder.weight

    def forward(self, tokens):
        out, _ = self.rnn(self.encoder(tokens))
        return self.decoder(out)


class TimeSequence(nn.Module):
    """pytorch/examples time_sequence_prediction's Sequence: two LSTMCells and a Linear, in double,
    trained with LBFGS(lr=0.8) and a closure."""

    def __init__(self, hidden=12):
        super().__init__()
        self.hidden = hidden
        self.lstm1, self.lstm2, self.linear = nn.LSTMCell(1, hidden), nn.LSTMCell(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, x):
        h = [torch.zeros(x.size(0), self.hidden, dtype=x.dtype) for _ in range(4)]
        outputs = []
        for x_t in x.split(1, dim=1):
            h[0], h[1] = self.lstm1(x_t, (h[0], h[1]))
            h[2], h[3] = self.lstm2(h[0], (h[2], h[3]))
            outputs.append(self.linear(h[2]))
        return torch.cat(outputs, dim=1)


class PublicPatternsTest(unittest.TestCase):
    def test_a_word_language_model_clipped_at_a_quarter(self):
        torch.manual_seed(1)
        model = WordLanguageModel()
        opt = torch.optim.SGD(model.parameters(), lr=20.0)
        monitor = gradflow.Monitor(model, optimizer=opt)
        tokens = torch.randint(0, 50, (21, 4), generator=torch.Generator().manual_seed(2))
        produced, applied, clipped = [], [], 0
        for _ in range(6):
            out = model(tokens[:-1])
            loss = nn.functional.cross_entropy(out.reshape(-1, 50), tokens[1:].reshape(-1))
            monitor.watch(loss)
            loss.backward()
            produced.append(grads(model))
            clipped += nn.utils.clip_grad_norm_(model.parameters(), 0.25).item() > 0.25
            applied.append(grads(model))
            opt.step()
            opt.zero_grad()
        got_produced, got_applied = rows(monitor, "produced"), rows(monitor, "applied")
        for step in range(6):
            for name, g in produced[step].items():  # the tied weight once, under its first name
                self.assertLess(rel(got_produced[(step, name)]["grad_norm"], g.norm().item()), 1e-9, (step, name))
                self.assertLess(rel(got_applied[(step, name)]["grad_norm"], applied[step][name].norm().item()), 1e-9)
        with tempfile.TemporaryDirectory() as d:
            gradflow.save_report(monitor, os.path.join(d, "r"))
            with open(os.path.join(d, "r", "summary.json")) as f:
                self.assertEqual(json.load(f)["runs"][0]["summary"]["applied"]["changed_steps"], clipped)
        self.assertGreater(clipped, 0)

    def test_a_time_sequence_trained_with_lbfgs(self):
        torch.manual_seed(0)
        model = TimeSequence().double()
        opt = torch.optim.LBFGS(model.parameters(), lr=0.8, max_iter=6)
        monitor = gradflow.Monitor(model, optimizer=opt)
        t = torch.arange(30, dtype=torch.double) + torch.randint(-40, 40, (6, 1)).double()
        data = torch.sin(t / 20)
        losses, returned = [], []

        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(data[:, :-1]), data[:, 1:])
            monitor.watch(loss)
            loss.backward()
            losses.append(loss.item())
            return loss

        for _ in range(2):
            returned.append(opt.step(closure).item())
        frame = monitor.trace_frame()
        recorded = {}
        for s, l, k in zip(frame["step"], frame["loss"], frame["kind"]):
            recorded[int(s)] = float(l)
        self.assertEqual([recorded[k] for k in sorted(recorded)], losses)
        with tempfile.TemporaryDirectory() as d:
            monitor.save_json(os.path.join(d, "t.json"))
            with open(os.path.join(d, "t.json")) as f:
                steps = json.load(f)["steps"]
        self.assertEqual([st["step_loss"] for st in steps if "step_loss" in st], returned)

    def test_gradient_accumulation_is_named_in_the_report_unless_steps_are_closed_by_hand(self):
        """nanoGPT's loop: two micro-batches a step, each loss divided by two, then clip and step."""
        def run(auto_step):
            model = make_model()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            monitor = gradflow.Monitor(model, optimizer=opt, auto_step=auto_step)
            accumulated = []
            data = batches(2 * STEPS)
            for step in range(STEPS):
                for x, y in data[2 * step:2 * step + 2]:
                    loss = nn.functional.mse_loss(model(x), y) / 2
                    monitor.watch(loss)
                    loss.backward()
                accumulated.append(grads(model))
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if not auto_step:
                    monitor.step()
            with tempfile.TemporaryDirectory() as d:
                gradflow.save_report(monitor, d)
                with open(os.path.join(d, "report.md")) as f:
                    return monitor, accumulated, f.read()

        monitor, accumulated, report = run(auto_step=True)
        self.assertIn("{} of the {} recorded steps closed without an optimizer step".format(STEPS, 2 * STEPS), report)
        monitor, accumulated, report = run(auto_step=False)
        self.assertNotIn("closed without an optimizer step", report)
        produced = rows(monitor, "produced")
        self.assertEqual(sorted({step for step, _ in produced}), list(range(STEPS)))
        for step in range(STEPS):
            for name, g in accumulated[step].items():
                self.assertLess(rel(produced[(step, name)]["grad_norm"], g.norm().item()), 1e-9, (step, name))


# ---- DistributedDataParallel on two Gloo ranks ----

class CountingGroup(dist.ProcessGroup):
    """The Gloo group, with a count of every collective that goes through it."""

    def __init__(self, inner):
        super().__init__(inner.rank(), inner.size())
        self.inner = inner
        self.calls = 0

    def getBackendName(self):
        return "counting"

    def _count(self, name, *args):
        self.calls += 1
        return getattr(self.inner, name)(*args)

    def allreduce(self, *args):
        return self._count("allreduce", *args)

    def broadcast(self, *args):
        return self._count("broadcast", *args)

    def allgather(self, *args):
        return self._count("allgather", *args)

    def barrier(self, *args):
        return self._count("barrier", *args)


DDP_STEPS = 6
NAN_STEP = 4


def ddp_train(rank, with_gradflow, nan_step=None):
    group = CountingGroup(dist.group.WORLD)
    net = make_model()
    ddp = nn.parallel.DistributedDataParallel(net, process_group=group)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.2)
    monitor = gradflow.Monitor(ddp, optimizer=opt) if with_gradflow else None
    local, averaged, calls = [], [], []
    step = [0]
    current = {}
    for n, p in net.named_parameters():
        p.register_hook(lambda g, n=n: current.__setitem__(n, g.detach().double().clone()))
    first = next(net.parameters())
    if nan_step is not None and rank == 1:
        first.register_hook(lambda g: g * math.nan if step[0] == nan_step else g)
    for i, (x, y) in enumerate(batches(DDP_STEPS, seed=20 + rank)):
        step[0] = i
        before = group.calls
        loss = nn.functional.mse_loss(ddp(x), y)
        if monitor:
            monitor.watch(loss)
        loss.backward()
        local.append(dict(current))
        averaged.append(grads(net))
        opt.step()
        opt.zero_grad()
        calls.append(group.calls - before)
    return net, monitor, local, averaged, calls


def ddp_rank_main(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    net, monitor, local, averaged, calls = ddp_train(rank, True)
    bare, _, _, _, bare_calls = ddp_train(rank, False)
    result = {"identical": all(torch.equal(a, b) for a, b in zip(net.parameters(), bare.parameters())),
              "calls": calls, "bare_calls": bare_calls, "names": sorted(n for n, _ in net.named_parameters())}
    produced = rows(monitor, "produced")
    local_rows = {}
    f = monitor.trace_frame()
    for i in range(len(f["step"])):
        if str(f["gradient"][i]) == "local":
            local_rows[(int(f["step"][i]), str(f["name"][i]), int(f["rank"][i]))] = float(f["grad_norm"][i])
    worst_avg = worst_local = 0.0
    for s in range(DDP_STEPS):
        for n, g in averaged[s].items():
            worst_avg = max(worst_avg, rel(produced[(s, n)]["grad_norm"], g.norm().item()))
            worst_local = max(worst_local, rel(local_rows[(s, n, rank)], local[s][n].norm().item()))
    result.update(worst_avg=worst_avg, worst_local=worst_local,
                  recorded=sorted({n for (_, n), row in produced.items() if row["kind"] == "parameter"}))
    # A NaN in rank 1's local gradient at one step.
    _, sick, _, _, _ = ddp_train(rank, True, nan_step=NAN_STEP)
    with tempfile.TemporaryDirectory() as d:
        sick.save_json(os.path.join(d, "t.json"))
        with open(os.path.join(d, "t.json")) as fh:
            trace = json.load(fh)
        findings = gradflow.save_report(sick, os.path.join(out, "sick"))
    result["first_nonfinite"] = trace["first_nonfinite"]
    result["nonfinite_ranks"] = sorted({(st["step"], r) for st in trace["steps"] for rec in st["records"]
                                        for r, loc in enumerate(rec.get("ranks", [])) if loc["nonfinite"] > 0})
    result["findings"] = [[x.kind, x.where, x.message] for x in findings if x.kind in ("non_finite", "rank_non_finite")]
    write_rank_result(out, rank, result)
    dist.barrier()
    dist.destroy_process_group()


class DistributedDataParallelTest(unittest.TestCase):
    def test_averaged_and_local_gradients_ride_in_ddps_allreduce(self):
        results = rank_results(self, __file__, 2, timeout=240)
        for r, res in enumerate(results):
            self.assertTrue(res["identical"], f"rank {r}: DDP training changed when gradflow was attached")
            self.assertEqual(res["calls"], res["bare_calls"], f"rank {r}: collectives per step")
            self.assertLess(res["worst_avg"], 1e-9)
            self.assertLess(res["worst_local"], 1e-9)
            self.assertEqual(res["recorded"], res["names"])  # no "module." prefix
            self.assertEqual(res["first_nonfinite"]["step"], NAN_STEP)
            # Rank 1 alone at that step; from the next one the averaged NaN is in every rank's weights.
            self.assertEqual([sr for sr in res["nonfinite_ranks"] if sr[0] <= NAN_STEP], [[NAN_STEP, 1]])
            named = [f for f in res["findings"] if "rank 1" in f[2]]
            self.assertTrue(named, res["findings"])
            self.assertIn(f"step {NAN_STEP}", named[0][2])
        self.assertEqual(results[0]["findings"], results[1]["findings"])

    def test_a_model_with_its_own_comm_hook_is_refused_with_a_clear_message(self):
        code = (
            "import datetime, torch, torch.distributed as dist, torch.nn as nn, gradflow\n"
            "from torch.distributed.algorithms.ddp_comm_hooks import default_hooks\n"
            "dist.init_process_group('gloo', init_method='tcp://127.0.0.1:%d', rank=0, world_size=1)\n"
            "ddp = nn.parallel.DistributedDataParallel(nn.Linear(3, 1))\n"
            "ddp.register_comm_hook(None, default_hooks.allreduce_hook)\n"
            "try:\n"
            "    gradflow.Monitor(ddp)\n"
            "except gradflow.UsageError as e:\n"
            "    print('refused:', e)\n")
        r = subprocess.run([sys.executable, "-c", code % free_port()], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("refused: this DistributedDataParallel model already has a communication hook", r.stdout)


if __name__ == "__main__":
    if len(sys.argv) == 5:
        ddp_rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        unittest.main(verbosity=2)
