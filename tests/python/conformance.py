"""What the conformance suite (test_conformance.py) enumerates: every torch.nn module class, built
small, with inputs; every torch.optim optimizer; and the independent truth a recording is checked
against, taken from autograd nodes (a parameter's AccumulateGrad node, a layer output's grad_fn),
never from a tensor hook."""
import io
import math

import torch
import torch.nn as nn

from real_models import first_tensor  # noqa: F401  (the first tensor of a module's output)


def is_layer(module):
    """Which modules' outputs are layers (gradflow's definition, docs/python-guide.md): a
    trainable parameter of its own, or a parametrized weight; a parametrization's own
    computation is not one."""
    if isinstance(module, nn.utils.parametrize.ParametrizationList):
        return False
    own = any(p.requires_grad for p in module.parameters(recurse=False))
    return own or nn.utils.parametrize.is_parametrized(module)


def module_classes():
    """Every nn.Module class torch.nn offers, by name, found when the test runs."""
    return {name: obj for name, obj in vars(nn).items()
            if isinstance(obj, type) and issubclass(obj, nn.Module) and not name.startswith("_")}


def optimizer_classes():
    """Every optimizer torch.optim offers, by name, found when the test runs."""
    return {name: obj for name, obj in vars(torch.optim).items()
            if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer}


def _randn(*shape):
    return lambda g: (torch.randn(*shape, generator=g),)


def _ints(high, *shape):
    return lambda g: (torch.randint(0, high, shape, generator=g),)


def _rnn(cls, **kw):
    return lambda: cls(4, 6, **kw)


def _decoder_layer():
    return nn.TransformerDecoderLayer(8, 2, 16)


def _encoder_layer():
    return nn.TransformerEncoderLayer(8, 2, 16)


def _seq2seq(g):
    return torch.randn(5, 2, 8, generator=g), torch.randn(4, 2, 8, generator=g)


def _decoder_inputs(g):
    return torch.randn(4, 2, 8, generator=g), torch.randn(5, 2, 8, generator=g)


def _log_softmax_inputs(g):
    return torch.randn(4, 8, generator=g), torch.randint(0, 10, (4,), generator=g)


def _bilinear_inputs(g):
    return torch.randn(4, 3, generator=g), torch.randn(4, 4, generator=g)


def _attention_inputs(g):
    return tuple(torch.randn(4, 2, 8, generator=g) for _ in range(3))


# name -> (a small module, its inputs from a generator): the classes that hold parameters.
WITH_PARAMETERS = {
    "AdaptiveLogSoftmaxWithLoss": (lambda: nn.AdaptiveLogSoftmaxWithLoss(8, 10, [4]), _log_softmax_inputs),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(4), _randn(5, 4)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), _randn(2, 3, 4, 4)),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(2), _randn(2, 2, 3, 3, 3)),
    "Bilinear": (lambda: nn.Bilinear(3, 4, 5), _bilinear_inputs),
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3), _randn(2, 2, 8)),
    "Conv2d": (lambda: nn.Conv2d(2, 3, 3), _randn(2, 2, 6, 6)),
    "Conv3d": (lambda: nn.Conv3d(2, 3, 2), _randn(1, 2, 4, 4, 4)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(2, 3, 3), _randn(2, 2, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3), _randn(2, 2, 4, 4)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2), _randn(1, 2, 3, 3, 3)),
    "DataParallel": (lambda: nn.DataParallel(nn.Linear(4, 3)), _randn(5, 4)),
    "Embedding": (lambda: nn.Embedding(10, 4), _ints(10, 3, 5)),
    "EmbeddingBag": (lambda: nn.EmbeddingBag(10, 4), _ints(10, 3, 5)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), _randn(3, 4, 5)),
    "GRU": (_rnn(nn.GRU, num_layers=2), _randn(5, 3, 4)),
    "GRUCell": (_rnn(nn.GRUCell), _randn(3, 4)),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(3, affine=True), _randn(2, 3, 8)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(3, affine=True), _randn(2, 3, 5, 5)),
    "InstanceNorm3d": (lambda: nn.InstanceNorm3d(3, affine=True), _randn(2, 3, 4, 4, 4)),
    "LayerNorm": (lambda: nn.LayerNorm(5), _randn(3, 5)),
    "LinearCrossEntropyLoss": (lambda: nn.LinearCrossEntropyLoss(8, 10), _log_softmax_inputs),  # torch 2.x
    "LazyBatchNorm1d": (lambda: nn.LazyBatchNorm1d(), _randn(5, 4)),
    "LazyBatchNorm2d": (lambda: nn.LazyBatchNorm2d(), _randn(2, 3, 4, 4)),
    "LazyBatchNorm3d": (lambda: nn.LazyBatchNorm3d(), _randn(2, 2, 3, 3, 3)),
    "LazyConv1d": (lambda: nn.LazyConv1d(3, 3), _randn(2, 2, 8)),
    "LazyConv2d": (lambda: nn.LazyConv2d(3, 3), _randn(2, 2, 6, 6)),
    "LazyConv3d": (lambda: nn.LazyConv3d(3, 2), _randn(1, 2, 4, 4, 4)),
    "LazyConvTranspose1d": (lambda: nn.LazyConvTranspose1d(3, 3), _randn(2, 2, 5)),
    "LazyConvTranspose2d": (lambda: nn.LazyConvTranspose2d(3, 3), _randn(2, 2, 4, 4)),
    "LazyConvTranspose3d": (lambda: nn.LazyConvTranspose3d(3, 2), _randn(1, 2, 3, 3, 3)),
    "LazyInstanceNorm1d": (lambda: nn.LazyInstanceNorm1d(affine=True), _randn(2, 3, 8)),
    "LazyInstanceNorm2d": (lambda: nn.LazyInstanceNorm2d(affine=True), _randn(2, 3, 5, 5)),
    "LazyInstanceNorm3d": (lambda: nn.LazyInstanceNorm3d(affine=True), _randn(2, 3, 4, 4, 4)),
    "LazyLinear": (lambda: nn.LazyLinear(4), _randn(3, 5)),
    "Linear": (lambda: nn.Linear(4, 3), _randn(5, 4)),
    "LSTM": (_rnn(nn.LSTM, num_layers=2), _randn(5, 3, 4)),
    "LSTMCell": (_rnn(nn.LSTMCell), _randn(3, 4)),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(8, 2), _attention_inputs),
    "PReLU": (lambda: nn.PReLU(), _randn(3, 4)),
    "RMSNorm": (lambda: nn.RMSNorm(5), _randn(3, 5)),  # torch 2.x
    "RNN": (_rnn(nn.RNN, num_layers=2), _randn(5, 3, 4)),
    "RNNCell": (_rnn(nn.RNNCell), _randn(3, 4)),
    "Sequential": (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), _randn(5, 3)),
    "Transformer": (lambda: nn.Transformer(8, 2, 1, 1, 16), _seq2seq),
    "TransformerDecoder": (lambda: nn.TransformerDecoder(_decoder_layer(), 2), _decoder_inputs),
    "TransformerDecoderLayer": (_decoder_layer, _decoder_inputs),
    "TransformerEncoder": (lambda: nn.TransformerEncoder(_encoder_layer(), 2), _randn(5, 2, 8)),
    "TransformerEncoderLayer": (_encoder_layer, _randn(5, 2, 8)),
}

# Only the classes this torch has: the table also covers those a newer torch added (RMSNorm, ...).
WITH_PARAMETERS = {name: case for name, case in WITH_PARAMETERS.items() if hasattr(nn, name)}

# Configurations whose outputs gradflow reads differently: (class, a small module, its inputs).
VARIANTS = {
    "LSTM bidirectional batch_first": (lambda: nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True),
                                       _randn(3, 5, 4)),
    "GRU batch_first one layer": (lambda: nn.GRU(4, 6, batch_first=True), _randn(3, 5, 4)),
    "TransformerEncoderLayer norm_first batch_first": (
        lambda: nn.TransformerEncoderLayer(8, 2, 16, norm_first=True, batch_first=True), _randn(2, 5, 8)),
    "Embedding sparse": (lambda: nn.Embedding(10, 4, sparse=True), _ints(10, 3, 5)),
}

# Classes with parameters whose training cannot run here, and why; their copies are still checked.
NO_TRAINING = {
    "SyncBatchNorm": (lambda: nn.SyncBatchNorm(4), "its training forward needs CUDA tensors and a process group"),
    "ModuleList": (lambda: nn.ModuleList([nn.Linear(3, 4)]), "a container without a forward (its modules are covered)"),
    "ModuleDict": (lambda: nn.ModuleDict({"a": nn.Linear(3, 4)}), "a container without a forward (its modules are covered)"),
    "ParameterList": (lambda: nn.ParameterList([nn.Parameter(torch.randn(3))]), "a container without a forward"),
    "ParameterDict": (lambda: nn.ParameterDict({"a": nn.Parameter(torch.randn(3))}), "a container without a forward"),
    "RNNCellBase": (lambda: nn.RNNCellBase(4, 6, True, 1), "an abstract base without a forward (its cells are covered)"),
    "RNNBase": (lambda: nn.RNNBase("GRU", 4, 6), "an abstract base without a forward (RNN, LSTM, GRU are covered)"),
}

# Classes without parameters that need constructor arguments (the others are built with none).
WITHOUT_PARAMETERS_ARGS = {
    "AdaptiveAvgPool1d": (2,), "AdaptiveAvgPool2d": (2,), "AdaptiveAvgPool3d": (2,), "AdaptiveMaxPool1d": (2,),
    "AdaptiveMaxPool2d": (2,), "AdaptiveMaxPool3d": (2,), "AvgPool1d": (2,), "AvgPool2d": (2,), "AvgPool3d": (2,),
    "ChannelShuffle": (2,), "ConstantPad1d": (1, 0.0), "ConstantPad2d": (1, 0.0), "ConstantPad3d": (1, 0.0),
    "CrossMapLRN2d": (3,), "Fold": ((4, 4), 2), "FractionalMaxPool2d": (2,), "FractionalMaxPool3d": (2,),
    "LPPool1d": (2, 2), "LPPool2d": (2, 2), "LocalResponseNorm": (2,), "MaxPool1d": (2,), "MaxPool2d": (2,),
    "MaxPool3d": (2,), "MaxUnpool1d": (2,), "MaxUnpool2d": (2,), "MaxUnpool3d": (2,), "PixelShuffle": (2,),
    "PixelUnshuffle": (2,), "ReflectionPad1d": (1,), "ReflectionPad2d": (1,), "ReflectionPad3d": (1,),
    "ReplicationPad1d": (1,), "ReplicationPad2d": (1,), "ReplicationPad3d": (1,), "Threshold": (0.1, 0.0),
    "Unflatten": (1, (2, 2)), "Unfold": (2,), "ZeroPad2d": (1,),
    # torch 2.x
    "CircularPad1d": (1,), "CircularPad2d": (1,), "CircularPad3d": (1,), "LPPool3d": (2, 2), "ZeroPad1d": (1,),
    "ZeroPad3d": (1,),
}


def build_without_parameters(name, cls):
    """The class built with its arguments; raises when it cannot be."""
    kwargs = {"output_size": 1} if name.startswith("FractionalMaxPool") else {}
    return cls(*WITHOUT_PARAMETERS_ARGS.get(name, ()), **kwargs)


def fused_layer_gradients(rnn, x, weight):
    """dL/d(output sequence of each layer) of an nn.RNN/LSTM/GRU of several layers (a bidirectional
    layer's: both directions' features), for the loss (last layer's output * weight).sum():
    autograd through one-layer copies of it."""
    outputs, h = [], x
    extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
    for k in range(rnn.num_layers):
        one = type(rnn)(h.shape[-1], rnn.hidden_size, num_layers=1, bias=rnn.bias, batch_first=rnn.batch_first,
                        bidirectional=rnn.bidirectional, **extra)
        with torch.no_grad():
            for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                for direction in ("", "_reverse"):
                    if hasattr(rnn, "{}_l{}{}".format(part, k, direction)):
                        getattr(one, part + "_l0" + direction).copy_(getattr(rnn, "{}_l{}{}".format(part, k, direction)))
        h = one(h)[0]
        outputs.append(h)
    return torch.autograd.grad((outputs[-1] * weight).sum(), outputs)


def floating(t):
    return t is not None and t.is_floating_point()


class Truth:
    """What autograd itself delivers in the watched backward: each parameter's .grad once its
    AccumulateGrad node has run, and dL/d(first output) of each call of each module with
    parameters of its own, from a hook on the output's grad_fn. Registered through torch's own
    node API only (never a tensor hook), and re-registered when a parameter's accumulator changes
    (model.to(dtype) makes a new one)."""

    def __init__(self, model, outputs=True):
        self.model = model
        self.params = {}      # name -> .grad after accumulation, in the watched backward
        self.outputs = {}     # module name -> [dL/d(output) of each call], in the watched backward
        self._hooked = {}     # name -> the accumulator hooked (kept alive with its hook)
        self._handles = []
        if outputs:
            for name, module in model.named_modules():
                if is_layer(module):
                    self._handles.append(module.register_forward_hook(self._output_hook(name or "(root)")))

    def arm(self):
        """Call between watch() and backward(): what came before (a gradient penalty's
        autograd.grad) is not the step's, and accumulators are hooked where they changed."""
        self.params, self.outputs = {}, {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad or p.numel() == 0:
                continue
            acc = p.view_as(p).grad_fn.next_functions[0][0]
            if self._hooked.get(name) is not acc:
                self._handles.append(acc.register_hook(
                    lambda gi, go, name=name, p=p: self.params.__setitem__(name, p.grad.detach().clone())))
                self._hooked[name] = acc

    def _output_hook(self, name):
        def hook(module, inputs, output):
            t = first_tensor(output)
            if not floating(t) or t.grad_fn is None or not torch.is_grad_enabled():
                return
            index = t.output_nr
            t.grad_fn.register_hook(lambda gi, go: self.outputs.setdefault(name, []).append(go[index].detach().clone()))
        return hook

    def new_step(self):
        self.params = {}
        self.outputs = {}

    def remove(self):
        for h in self._handles:
            h.remove()


def stats(t):
    """norm, largest |x|, mean, zero fraction of a gradient (dense, in double)."""
    d = t.to_dense().double() if t.layout != torch.strided else t.double()
    n = d.numel()
    return {"grad_norm": d.norm().item(), "grad_max_abs": d.abs().max().item() if n else 0.0,
            "grad_mean": d.sum().item() / n if n else 0.0, "zero_fraction": (d == 0).sum().item() / n if n else 0.0}


def calls_stats(grads):
    """The figures of several calls' gradients taken together."""
    norm = math.sqrt(sum(g.double().norm().item() ** 2 for g in grads))
    return {"grad_norm": norm, "grad_max_abs": max(g.double().abs().max().item() for g in grads)}


def rows_of(frame, step, gradient="produced"):
    """name -> {figure: value} for one step's rows of trace_frame()."""
    out = {}
    for i in range(len(frame["name"])):
        if int(frame["step"][i]) == step and str(frame["gradient"][i]) == gradient:
            out[str(frame["name"][i])] = {k: float(frame[k][i]) for k in
                                          ("grad_norm", "grad_max_abs", "grad_mean", "zero_fraction")}
    return out


def save_load(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)  # a whole model, as a program that saved one loads it


def outcome(fn):
    """('ok', value) or ('raised', exception type name): what an operation did."""
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001 (the point is to compare whatever it raises)
        return "raised", type(e).__name__
