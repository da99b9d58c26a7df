"""gradflow.Monitor on real models from Python, against the bare training step in the same process:
a torchvision ResNet-18 and a 4-layer Transformer language model, one thread, every step and
every 10th step recorded. The loop clips the gradient and the Monitor is given the optimizer, so
each recorded step holds both the gradient backward produced and the one the optimizer applied.

    PYTHONPATH=build/python python3 benchmarks/real_models_bench.py [--rounds N] [--compile] [--json FILE]

--compile: each model runs through torch.compile (inductor; compiled once, before the first
round), with every Monitor attached to the module it compiled: the overhead on a compiled step.

Every step: each round times one bare step and one recorded step (under a fresh Monitor, after
its first step), in a shuffled order, so that the machine's drifts hit both alike; the overhead is
the median over rounds of (recorded / bare) - 1. Every 10th step: rounds of two 10-step blocks,
bare and under a fresh Monitor with every=10 (its construction included), the median of their
ratio - 1.
"""
import argparse
import math
import random
import statistics
import sys
import time

import torch
import torch.nn as nn

import gradflow
from bench_models import run_models

BLOCK = 10  # every=10: one recorded step in ten
VOCAB, SEQ = 2000, 64


class TransformerLM(nn.Module):
    """A 4-layer Transformer language model: token embedding × sqrt(d) plus learned positions, causal mask."""

    def __init__(self, vocab=VOCAB, d=256, heads=4, layers=4, seq=SEQ):
        super().__init__()
        self.d = d
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1))

    def forward(self, tokens):
        h = self.embed(tokens) * math.sqrt(self.d) + self.pos
        return self.head(self.encoder(h, mask=self.mask))


def resnet18(run):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    net = run(model)
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 10, (8,))  # ImageNet's input size
    return model, lambda: nn.functional.cross_entropy(net(x), y)


def transformer_lm(run):
    torch.manual_seed(0)
    model = TransformerLM()
    net = run(model)
    tokens = torch.randint(0, VOCAB, (16, SEQ + 1))
    return model, lambda: nn.functional.cross_entropy(net(tokens[:, :-1]).reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


MODELS = {"resnet18": resnet18, "transformer-lm": transformer_lm}
def step(model, loss_fn, opt, monitor=None):
    loss = loss_fn()
    if monitor:
        monitor.watch(loss)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()
    opt.zero_grad()


def timed_step(model, loss_fn, opt, every):
    """One step's seconds: bare (every=None), or recorded under a fresh Monitor (every=1) after one
    untimed step, so that its graph walk is done."""
    monitor = gradflow.Monitor(model, optimizer=opt, every=every) if every else None
    if monitor:
        step(model, loss_fn, opt, monitor)
    t0 = time.perf_counter()
    step(model, loss_fn, opt, monitor)
    elapsed = time.perf_counter() - t0
    if monitor:
        applied = [g for g in monitor.trace_frame()["gradient"] if str(g) == "applied"]
        if monitor.steps != 2 or not applied:
            raise RuntimeError("the Monitor did not record both gradients")
        monitor.detach()
    return elapsed


UNITS = {"bare": None, "recorded": 1}


def timed_block(model, loss_fn, opt, every):
    """Seconds per step of BLOCK steps: bare, or under a fresh Monitor recording every `every`-th
    step (its construction and first, recorded step included)."""
    t0 = time.perf_counter()
    monitor = gradflow.Monitor(model, optimizer=opt, every=every) if every else None
    for _ in range(BLOCK):
        step(model, loss_fn, opt, monitor)
    elapsed = (time.perf_counter() - t0) / BLOCK
    if monitor:
        monitor.detach()
    return elapsed


def median_ratio(rounds, rng, units):
    """Median over rounds of each unit's time / the bare unit's, the units shuffled in each round."""
    ratios = {u: [] for u in units}
    bare = []
    for _ in range(rounds):
        order = list(units)
        rng.shuffle(order)
        t = {u: units[u]() for u in order}
        bare.append(t["bare"])
        for u in units:
            ratios[u].append(t[u] / t["bare"])
    return {u: statistics.median(r) for u, r in ratios.items()}, statistics.median(bare)


def measure(name, rounds, rng, compiled):
    model, loss_fn = MODELS[name](torch.compile if compiled else (lambda m: m))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for every in (1, None):  # with and without a Monitor: under --compile, the graphs for both are compiled here
        timed_step(model, loss_fn, opt, every)
    steps, bare = median_ratio(rounds, rng, {u: (lambda e=e: timed_step(model, loss_fn, opt, e)) for u, e in UNITS.items()})
    blocks, _ = median_ratio(max(3, rounds // 3), rng,
                             {"bare": lambda: timed_block(model, loss_fn, opt, None),
                              "every 10th": lambda: timed_block(model, loss_fn, opt, BLOCK)})
    return {"model": name, "compiled": compiled, "bare_ms": 1000 * bare, "every step": steps["recorded"] - 1,
            "every 10th": blocks["every 10th"] - 1,
            # What one recorded step in ten adds, from the step measurement (the nine others run
            # only the hooks' dispatch: gradflow_kernels_bench, 0.5 µs a tensor).
            "every 10th, from the recorded step": (steps["recorded"] - 1) / BLOCK}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--compile", action="store_true", help="torch.compile each model (inductor) before timing")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(1)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, 1 thread; median over {a.rounds} "
          f"interleaved rounds; clipped loop, optimizer attached{'; torch.compile (inductor)' if a.compile else ''}")
    run_models("real_models_bench", a.models, MODELS, lambda name: measure(name, a.rounds, rng, a.compile),
               lambda name, r: f"{name:15} bare {r['bare_ms']:8.1f} ms/step   every step {100 * r['every step']:+6.2f}%   "
                               f"every 10th {100 * r['every 10th']:+6.2f}% "
                               f"(one recorded step in ten: {100 * r['every 10th, from the recorded step']:+5.2f}%)",
               a.json)


if __name__ == "__main__":
    main()
