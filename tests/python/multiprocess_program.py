"""A Hogwild trainer as torch.multiprocessing's example writes one: the parent shares the model's
memory and its workers train it. Run as `python multiprocess_program.py METHOD OUT WORKERS MODE`:
MODE 'bare' (no gradflow), 'parent' (a Monitor in the parent only, streaming to OUT), or 'workers'
(besides, each worker its own Monitor streaming to OUT/worker-<rank>, which records the truth of
each step beside it). Prints one JSON line: the parameters after training, the parent's findings
and the truth each worker saw."""
import json
import os
import sys

import torch
import torch.multiprocessing as mp
import torch.nn as nn

STEPS = 4


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def train(rank, model, mode, out):
    import gradflow  # a spawned worker imports it itself, as a program would

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradflow.Monitor(model, out=os.path.join(out, "worker-{}".format(rank))) if mode == "workers" else None
    g = torch.Generator().manual_seed(10 + rank)
    truth = []
    for _ in range(STEPS):
        x = torch.randn(8, 4, generator=g)
        loss = model(x).pow(2).mean()
        if monitor:
            monitor.watch(loss)
        loss.backward()
        truth.append({n: p.grad.double().norm().item() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
    if monitor:
        gradflow.save_report(monitor, os.path.join(out, "worker-{}".format(rank)))
        with open(os.path.join(out, "worker-{}".format(rank), "truth.json"), "w") as f:
            json.dump(truth, f)


def main():
    method, out, workers, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = make_model()
    model.share_memory()
    monitor = None
    if mode != "bare":
        import gradflow

        monitor = gradflow.Monitor(model, out=out)
    ctx = mp.get_context(method)
    procs = [ctx.Process(target=train, args=(r, model, mode, out)) for r in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    result = {"exit_codes": [p.exitcode for p in procs],
              "params": [p.detach().flatten().tolist() for p in model.parameters()]}
    if monitor:
        import gradflow

        findings = gradflow.save_report(monitor, out)
        result["findings"] = [{"kind": f.kind, "message": f.message} for f in findings]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
