"""gradflow.Monitor on real models from Python, against the bare training step in the same process:
a torchvision ResNet-18 and a 4-layer Transformer language model, one thread, every step and
every 10th step recorded. The loop clips the gradient and the Monitor is given the optimizer, so
each recorded step holds both the gradient backward produced and the one the optimizer applied.

    PYTHONPATH=build/python /usr/bin/python3 benchmarks/real_models_bench.py [--rounds N] [--json FILE]

Modes run in interleaved blocks of 10 steps, in a shuffled order each round; the overhead is
the median over rounds of (mode's time / bare time in the same round) - 1.
"""
import argparse
import json
import math
import random
import statistics
import sys
import time

import torch
import torch.nn as nn

import gradflow

BLOCK = 10  # steps per block: every=10 records one step in each
VOCAB, SEQ = 10000, 128


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
MODES = {"bare": None, "every step": 1, "every 10th": 10}


def block(model, loss_fn, opt, every):
    monitor = gradflow.Monitor(model, optimizer=opt, every=every) if every else None
    t0 = time.perf_counter()
    for _ in range(BLOCK):
        loss = loss_fn()
        if monitor:
            monitor.watch(loss)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
    elapsed = (time.perf_counter() - t0) / BLOCK
    if monitor:
        applied = [g for g in monitor.trace_frame()["gradient"] if str(g) == "applied"]
        if monitor.steps != BLOCK or not applied:
            raise RuntimeError("the Monitor did not record both gradients")
        monitor.detach()
    return elapsed


def measure(name, rounds, rng):
    model, loss_fn = MODELS[name]()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for every in MODES.values():
        block(model, loss_fn, opt, every)
    times = {m: [] for m in MODES}
    ratios = {m: [] for m in MODES}
    for _ in range(rounds):
        order = list(MODES)
        rng.shuffle(order)
        for m in order:
            times[m].append(block(model, loss_fn, opt, MODES[m]))
        for m in MODES:
            ratios[m].append(times[m][-1] / times["bare"][-1])
    out = {"model": name, "bare_ms": 1000 * statistics.median(times["bare"])}
    for m in list(MODES)[1:]:
        out[m] = {"ms": 1000 * statistics.median(times[m]), "overhead": statistics.median(ratios[m]) - 1}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(1)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, 1 thread; {BLOCK}-step blocks, "
          f"median over {a.rounds} interleaved rounds; clipped loop, optimizer attached")
    records = []
    for name in a.models.split(","):
        if name not in MODELS:
            sys.exit(f"real_models_bench: unknown model '{name}': name some of {', '.join(MODELS)}")
        r = measure(name, a.rounds, rng)
        records.append(r)
        print(f"{name:15} bare {r['bare_ms']:8.1f} ms/step   every step {100 * r['every step']['overhead']:+6.2f}%   "
              f"every 10th {100 * r['every 10th']['overhead']:+6.2f}%", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
