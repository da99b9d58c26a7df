"""How gradients flow backward through a torch.nn.Module: the gradflow C++ Monitor, from Python.

    import gradflow
    monitor = gradflow.Monitor(model, out="gradflow-report")  # hooks every trainable parameter
    for x, y in data:
        loss = criterion(model(x), y)
        monitor.watch(loss)                    # the loss and the layer outputs below it
        loss.backward()
        optimizer.step(); optimizer.zero_grad()
    findings = gradflow.save_report(monitor, "gradflow-report", label="my model")
    gradflow.require_healthy(findings, ["vanishing", "non_finite"])
"""
import torch  # noqa: F401  (loads LibTorch and its Python types before the extension)

from ._gradflow import (  # noqa: F401
    Finding,
    GradflowError,
    GradientHealthError,
    Monitor,
    UsageError,
    report,
    require_healthy,
    save_report,
)

__all__ = ["Monitor", "Finding", "save_report", "report", "require_healthy", "GradflowError", "UsageError",
           "GradientHealthError"]
