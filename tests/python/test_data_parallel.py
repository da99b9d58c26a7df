"""gradflow.Monitor on a torch.distributed process group: two ranks on loopback record what one
process records on the whole batch."""
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import unittest

import torch
import torch.distributed as dist
import torch.nn as nn

import gradflow

STEPS, BATCH = 4, 32


def model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)).double()


def batches():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(BATCH, 8, generator=g, dtype=torch.double), torch.randn(BATCH, 2, generator=g, dtype=torch.double))
            for _ in range(STEPS)]


def train(net, monitor, shard=slice(None), average=False):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for x, y in batches():
        loss = (net(x[shard]) - y[shard]).pow(2).mean()
        monitor.watch(loss)
        loss.backward()
        if average:
            monitor.average_gradients()
        opt.step()
        opt.zero_grad()


def norms(monitor):
    f = monitor.trace_frame()
    return {(int(s), str(n)): float(v) for s, n, v, g in zip(f["step"], f["name"], f["grad_norm"], f["gradient"])
            if g == "produced"}


def rank_main(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    net = model()
    if rank == 1:
        with torch.no_grad():  # another start: the broadcast must make the ranks equal
            for p in net.parameters():
                p.add_(1.0)
    monitor = gradflow.Monitor(net, process_group=dist.group.WORLD, batch_per_rank=BATCH // world)
    monitor.broadcast_parameters()
    per = BATCH // world
    train(net, monitor, slice(rank * per, (rank + 1) * per), average=True)
    if rank == 0:
        monitor.save_csv(out)
        with open(out + ".norms", "w") as f:
            json.dump([[s, n, v] for (s, n), v in norms(monitor).items()], f)
    dist.destroy_process_group()


class DataParallelTest(unittest.TestCase):
    def test_two_ranks_record_the_averaged_gradient_one_process_records(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "trace.csv")
            procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(port), out]) for r in range(2)]
            try:
                codes = [p.wait(timeout=120) for p in procs]
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            self.assertEqual(codes, [0, 0])
            with open(out + ".norms") as f:
                ranks = {(s, n): v for s, n, v in json.load(f)}
        net = model()
        single = gradflow.Monitor(net)
        train(net, single)
        expected = norms(single)
        self.assertEqual(sorted(ranks), sorted(expected))
        for key, value in expected.items():
            self.assertLessEqual(abs(ranks[key] - value), 1e-10 * value, key)


if __name__ == "__main__":
    if len(sys.argv) == 5:
        rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        unittest.main(verbosity=2)
