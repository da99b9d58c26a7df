"""The Python training loop with gradflow.Monitor against the same loop with hand-written hooks
computing the same statistics (six per tensor, parameters and layer outputs, every step).

    PYTHONPATH=build/python /usr/bin/python3 benchmarks/python_bench.py [--quick] [--json FILE]

Each mode runs in interleaved blocks of steps; the overhead is the median over rounds of the
mode's time / the bare loop's time in the same round, - 1.
"""
import argparse
import random
import statistics
import sys
import time

import torch
import torch.nn as nn

import gradflow
from bench_models import run_models

MODELS = {"mlp": (50, 256), "mlp-small": (10, 64)}
BATCH = 128


def mlp(depth, width):
    layers = [nn.Linear(32, width)]
    for _ in range(depth - 2):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    layers += [nn.ReLU(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def six_statistics(g):
    """What a user writes by hand: norm, mean, std, max |g|, zero fraction, non-finite count."""
    return (g.norm().item(), g.mean().item(), g.std().item(), g.abs().max().item(),
            (g == 0).float().mean().item(), (~torch.isfinite(g)).sum().item())


class HandHooks:
    """Parameter hooks and layer-output hooks (a forward hook that hooks each Linear's output)."""

    def __init__(self, model):
        self.records = []
        self.handles = []
        for name, p in model.named_parameters():
            self.handles.append(p.register_hook(lambda g, n=name: self.records.append((n, six_statistics(g)))))
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear):
                self.handles.append(m.register_forward_hook(self.output_hook(name)))

    def output_hook(self, name):
        def hook(module, inputs, output):
            output.register_hook(lambda g: self.records.append((name, six_statistics(g))))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


class Loop:
    def __init__(self, depth, width):
        torch.manual_seed(0)
        self.model = mlp(depth, width)
        self.x, self.y = torch.randn(BATCH, 32), torch.randint(0, 10, (BATCH,))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4)

    def block(self, mode, steps):
        monitor = gradflow.Monitor(self.model) if mode == "gradflow" else None
        hooks = HandHooks(self.model) if mode == "hand-written" else None
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
            if monitor:
                monitor.watch(loss)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
        elapsed = (time.perf_counter() - t0) / steps
        if monitor:
            if monitor.steps != steps:
                raise RuntimeError(f"gradflow recorded {monitor.steps} steps instead of {steps}")
            monitor.detach()
        if hooks:
            hooks.close()
            if not hooks.records:
                raise RuntimeError("the hand-written hooks recorded nothing")
        return elapsed


def measure(name, rounds, steps, rng):
    loop = Loop(*MODELS[name])
    modes = ["bare", "gradflow", "hand-written"]
    for m in modes:
        loop.block(m, 2)
    times = {m: [] for m in modes}
    ratios = {m: [] for m in modes}
    for _ in range(rounds):
        order = modes[:]
        rng.shuffle(order)
        for m in order:
            times[m].append(loop.block(m, steps))
        for m in modes:
            ratios[m].append(times[m][-1] / times["bare"][-1])
    bare = statistics.median(times["bare"])
    out = {"model": name, "bare_ms": 1000 * bare}
    for m in modes[1:]:
        out[m + "_ms"] = 1000 * statistics.median(times[m])
        out[m + "_overhead"] = statistics.median(ratios[m]) - 1
    hand = out["hand-written_overhead"]
    out["gradflow_share_of_hand_written"] = out["gradflow_overhead"] / hand if hand > 0 else float("nan")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds (a smoke run)")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--models", default="mlp,mlp-small")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    rounds = a.rounds or (3 if a.quick else 15)
    rng = random.Random(1)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"median over {rounds} interleaved rounds")
    print(f"{'model':10} {'bare ms':>8} {'gradflow':>9} {'overhead':>9} {'hand ms':>8} {'overhead':>9} {'share':>6}")
    run_models("python_bench", a.models, MODELS, lambda name: measure(name, rounds, 3 if name == "mlp" else 20, rng),
               lambda name, r: f"{name:10} {r['bare_ms']:8.2f} {r['gradflow_ms']:9.2f} {100 * r['gradflow_overhead']:+8.1f}% "
                               f"{r['hand-written_ms']:8.2f} {100 * r['hand-written_overhead']:+8.1f}% "
                               f"{r['gradflow_share_of_hand_written']:6.2f}", a.json)


if __name__ == "__main__":
    main()
