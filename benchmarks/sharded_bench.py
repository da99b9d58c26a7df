"""gradflow.Monitor on a model sharded by FSDP2's fully_shard, two Gloo ranks on this machine's CPU,
against the bare sharded training step in the same processes: a 4-layer Transformer language
model (the real-models benchmark's), one thread per rank, every step and every 10th step recorded.
The loop clips the gradient and the Monitor is given the optimizer, so each recorded step holds the
produced and the applied gradient, combined from both ranks' parts by one all-gather.

    PYTHONPATH=build/python python3 benchmarks/sharded_bench.py [--rounds N] [--json FILE]

Each round times, in an order both ranks draw from the same seed, a block of 10 bare steps, a
block of 10 steps under a Monitor recording every step, and one under a Monitor with every=10
(constructions included); the overhead is the median over rounds of (block / bare block) - 1.
"""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.distributed.fsdp import fully_shard

import gradflow
from real_models_bench import SEQ, VOCAB, TransformerLM, step

BLOCK = 10
BATCH = 8  # per rank


def block(model, opt, data, monitor_every):
    """Seconds for BLOCK training steps, under a fresh Monitor when monitor_every is set."""
    dist.barrier()
    start = time.perf_counter()
    monitor = gradflow.Monitor(model, optimizer=opt, every=monitor_every) if monitor_every else None
    for x, y in data:
        step(model, lambda: nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()), opt, monitor)
    if monitor:
        monitor.detach()
    dist.barrier()
    return time.perf_counter() - start


def rank_main(rank, world, port, rounds, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TransformerLM()
    for layer in model.encoder.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(100 + rank)
    data = [(torch.randint(VOCAB, (BATCH, SEQ), generator=g), torch.randint(VOCAB, (BATCH, SEQ), generator=g))
            for _ in range(BLOCK)]
    block(model, opt, data, 0)  # warm-up
    order = random.Random(7)
    ratios = {1: [], BLOCK: []}
    for _ in range(rounds):
        kinds = [0, 1, BLOCK]
        order.shuffle(kinds)
        times = {k: block(model, opt, data, k) for k in kinds}
        for k in (1, BLOCK):
            ratios[k].append(times[k] / times[0] - 1)
    if rank == 0:
        result = {"every_step": statistics.median(ratios[1]), "every_10th": statistics.median(ratios[BLOCK]),
                  "rounds": rounds, "ranks": world, "torch": torch.__version__}
        with open(out, "w") as fh:
            json.dump(result, fh)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.json")
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(rank_main, args=(2, port, args.rounds, out), nprocs=2)
        with open(out) as fh:
            result = json.load(fh)
    print(f"FSDP2 Transformer LM, 2 Gloo ranks x {BATCH} sequences of {SEQ}, {result['rounds']} rounds: "
          f"every step {result['every_step']:+.2%}, every 10th {result['every_10th']:+.2%}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    sys.exit(main())
