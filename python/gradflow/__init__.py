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
import weakref

import torch  # noqa: F401  (loads LibTorch and its Python types before the extension)

from . import _build

if torch.__version__ != _build.TORCH_VERSION:
    raise ImportError(f"gradflow was built against torch {_build.TORCH_VERSION} and this environment has torch "
                      f"{torch.__version__}: build it again here (pip install --force-reinstall --no-deps <gradflow checkout>)")

from ._gradflow import (  # noqa: F401
    Finding,
    GradflowError,
    GradientHealthError,
    UsageError,
    _Monitor,
    report,
    require_healthy,
    save_report,
)
from . import _hooks
from ._coord import CoordCheckResult, coord_check  # noqa: F401


class Monitor(_Monitor):
    """Records the gradient flow of a torch.nn.Module's training.

    Monitor(model, *, optimizer=None, grad_scaler=None, every=1, parameters=True, activations=True,
            weight_norms=True, update_norms=False, auto_step=True, saturation_threshold=0.1,
            process_group=None, batch_per_rank=0, out=None, force=False, traits=None, sharpness_every=0,
            sharpness_loss=None)

    model: a torch.nn.Module, or a DistributedDataParallel one (its gradient is then recorded as
    averaged, every rank's local one beside it, through DDP's own allreduce).
    optimizer: also record the gradient the optimizer applies (after clipping, unscaling) and
    one record per evaluation of a closure (LBFGS); the same as attach_optimizer(optimizer).
    grad_scaler: a torch.cuda.amp.GradScaler (or any object with get_scale()): recorded gradients
    are divided by the scale, and the steps it skips are marked skipped.
    sharpness_every, sharpness_loss: every k-th recorded step, the loss Hessian's largest eigenvalue at the
    parameters the step's update produced, for sharpness_loss() (a function returning the loss on a fixed
    batch), by power iteration on Hessian-vector products, measured after optimizer.step() (optimizer=)
    or at step(); the report draws it against 2/lr of an attached SGD.
    traits: what the model is ({"activation": "relu", "norm": "batch", ...}), for save_report's remedies;
    what its module tree shows (normalisation layers, a recurrent cell, its one activation module
    kind) is read from it, and traits= adds to or overrides that.
    """

    def __init__(self, model, *, optimizer=None, activations=True, **options):
        ddp, inner = _hooks.unwrap(model)
        # A live module's outputs are found by forward hooks (what each call returns); a
        # TorchScript module's by the C++ Monitor, which names what each submodule call returns.
        hook_outputs = activations and isinstance(inner, torch.nn.Module) and not isinstance(inner, torch.jit.ScriptModule)
        # What the module tree shows (normalisation, a recurrent cell, the activation), under what
        # the program said (traits=): remedies are chosen from both.
        if isinstance(inner, torch.nn.Module):
            options["traits"] = {**_hooks.model_traits(inner), **(options.get("traits") or {})}
        # DTensor parameters (FSDP2, tensor parallelism): each rank's part, combined into the whole.
        sharding = _hooks.sharding(inner) if isinstance(inner, torch.nn.Module) else None
        super().__init__(model if ddp is None else ddp, module=inner, activations=activations and not hook_outputs,
                         sharding=sharding, **options)
        self._output_hooks = _hooks.hook_module_outputs(self, inner) if hook_outputs else []
        if hook_outputs:
            self._names_layer_outputs()
            _hooks.listen_to_recomputation(self)
        # A Monitor dropped without detach() leaves no entry behind.
        weakref.finalize(self, _hooks.unhook_module_outputs, self._output_hooks)
        self._detach_steps = []
        # What it attached to, for the first watch() to tell whether the model still holds it.
        self._attached = _hooks.attached_parameters(inner)
        if sharding is not None:
            self._detach_steps.append(_hooks.hook_sharded_gradients(self, inner, sharding))
        if self._ddp is not None:
            _hooks.follow_ddp(self, self._ddp)
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    def watch(self, loss):
        """Record the loss (before scaling) and hook the layer outputs below it; call before loss.backward()"""
        if self._attached is not None:
            _hooks.say_if_parameters_replaced(self._attached)
            self._attached = None
        super().watch(loss)

    def attach_optimizer(self, optimizer):
        """Tell the Monitor of each optimizer.step(): the gradient it applies is recorded beside the
        one backward produced, and each evaluation of a closure is a record of its own."""
        self._detach_steps.append(_hooks.wrap_optimizer_step(self, optimizer))
        self._expect_optimizer_steps()

    def detach(self):
        """Remove every hook, and let the optimizer's step go on as without gradflow; recorded data stays."""
        for detach_step in self._detach_steps:
            detach_step()
        self._detach_steps.clear()
        _hooks.unhook_module_outputs(self._output_hooks)
        self._output_hooks.clear()
        super().detach()


__all__ = ["Monitor", "Finding", "save_report", "report", "require_healthy", "GradflowError", "UsageError",
           "GradientHealthError"]
