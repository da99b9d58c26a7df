"""A PyTorch training loop with gradflow: the lines marked `# gradflow` are all it adds.

    python3 examples/python/train.py [OUT_DIR]
"""
import sys

import torch
import torch.nn as nn

import gradflow  # gradflow

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.Sigmoid(), *[m for _ in range(8) for m in (nn.Linear(64, 64), nn.Sigmoid())],
                      nn.Linear(64, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(256, 20), torch.randn(256, 1)
out = sys.argv[1] if len(sys.argv) > 1 else "gradflow-report"

monitor = gradflow.Monitor(model, optimizer=optimizer, out=out, force=True)  # gradflow: streams to out/trace.jsonl
for step in range(100):
    loss = nn.functional.mse_loss(model(x), y)
    monitor.watch(loss)  # gradflow
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()

findings = gradflow.save_report(monitor, out, label="sigmoid MLP")  # gradflow: the report beside it
for f in findings:
    print(f"{f.severity}: {f.kind} at {f.where}: {f.message}")
try:
    gradflow.require_healthy(findings, ["vanishing"])  # gradflow
except gradflow.GradientHealthError as e:
    print(f"as expected for 10 sigmoid layers: {len(e.findings)} vanishing finding(s)")
