"""gradflow.Monitor on real models from Python, against the bare training step in the same process:
a torchvision ResNet-18 and a 4-layer Transformer language model, one thread, every step and
every 10th step recorded. The loop clips the gradient and the Monitor is given the optimizer, so
each recorded step holds both the gradient backward produced and the one the optimizer applied.

    PYTHONPATH=build/python /usr/bin/python3 benchmarks/real_models_bench.py [--rounds N] [--json FILE]

Each round times one bare step, one recorded step and one step a Monitor with every=10 does not
record, in a shuffled order (single steps, so that the machine's drifts hit all three alike);
a ratio is the median over rounds of (step / the round's bare step). Every step costs the
recorded ratio; every 10th step costs (recorded + 9 × unrecorded) / 10.
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


def resnet18():
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 10, (8,))  # ImageNet's input size
    return model, lambda: nn.functional.cross_entropy(model(x), y)


def transformer_lm():
    torch.manual_seed(0)
    model = TransformerLM()
    tokens = torch.randint(0, VOCAB, (16, SEQ + 1))
    return model, lambda: nn.functional.cross_entropy(model(tokens[:, :-1]).reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


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
    """One step's seconds: bare (every=None), or under a fresh Monitor after one untimed step (so
    its graph walk is done): with every=1 the timed step is recorded, with every=10 it is not."""
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


UNITS = {"bare": None, "recorded": 1, "unrecorded": 10}


def measure(name, rounds, rng):
    model, loss_fn = MODELS[name]()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for every in UNITS.values():
        timed_step(model, loss_fn, opt, every)
    ratios = {u: [] for u in UNITS}
    bare = []
    for _ in range(rounds):
        order = list(UNITS)
        rng.shuffle(order)
        t = {u: timed_step(model, loss_fn, opt, UNITS[u]) for u in order}
        bare.append(t["bare"])
        for u in UNITS:
            ratios[u].append(t[u] / t["bare"])
    recorded = statistics.median(ratios["recorded"])
    unrecorded = statistics.median(ratios["unrecorded"])
    return {"model": name, "bare_ms": 1000 * statistics.median(bare), "recorded_step": recorded - 1,
            "unrecorded_step": unrecorded - 1, "every step": recorded - 1,
            "every 10th": (recorded + (BLOCK - 1) * unrecorded) / BLOCK - 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(1)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, 1 thread; median over {a.rounds} "
          f"interleaved rounds; clipped loop, optimizer attached")
    run_models("real_models_bench", a.models, MODELS, lambda name: measure(name, a.rounds, rng),
               lambda name, r: f"{name:15} bare {r['bare_ms']:8.1f} ms/step   every step {100 * r['every step']:+6.2f}%   "
                               f"every 10th {100 * r['every 10th']:+6.2f}%   "
                               f"(a step not recorded {100 * r['unrecorded_step']:+6.2f}%)", a.json)


if __name__ == "__main__":
    main()
