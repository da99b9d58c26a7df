"""The coordinate check across widths for a model factory of the user's (gradflow.coord_check)."""
import json
import math

import torch

from . import _gradflow

_EMPTY = torch.empty(0)  # no figure: NaN
QUANTITIES = ("activation", "change", "output_gradient", "weight_gradient", "update")


class CoordCheckResult:
    """What gradflow.coord_check() measured and concluded.

    rows      one dict per (width, step, layer, quantity): its figure, mean |x| over the coordinates
    verdicts  one dict per layer: layer, kind, measured, stable; where unstable: quantity, slope, step,
              departs_at, departs_quantity (measured is False for a module that returned no output of its own at two
              widths: nn.MultiheadAttention applies its out_proj's weight itself)
    slopes    {(layer, quantity, step): log-log slope against width, or None}
    findings  gradflow.Finding objects of kind width_unstable, with the remedy for each layer's kind
    out       the folder the report was written to (None without out=)
    """

    def __init__(self, check, analysis, out):
        self.check = check
        self.label = check["label"]
        self.widths = list(check["widths"])
        self.verdicts = analysis["verdicts"]
        self.slopes = analysis["slopes"]
        self.findings = analysis["findings"]
        self.out = out

    @property
    def rows(self):
        out = []
        for q in QUANTITIES:
            for t, layers in enumerate(self.check["figures"][q]):
                for l, layer in enumerate(self.check["layers"]):
                    for w, width in enumerate(self.widths):
                        v = layers[l][w]
                        out.append({"width": width, "step": t, "layer": layer["name"], "kind": layer["kind"], "quantity": q,
                                    "value": math.nan if v is None else v})
        return out

    def unstable_layers(self):
        return [v["layer"] for v in self.verdicts if not v["stable"]]

    def unmeasured_layers(self):
        return [v["layer"] for v in self.verdicts if not v["measured"]]

    def __repr__(self):
        unstable = self.unstable_layers()
        return (f"CoordCheckResult({self.label!r}, widths={self.widths}, "
                f"{'unstable: ' + ', '.join(unstable) if unstable else 'every layer width-stable'})")


def _own_weight(module):
    """A module's weight: its first trainable parameter of two or more dimensions (nn.MultiheadAttention's
    in_proj_weight), else its first trainable parameter (a norm's gain); None without one."""
    own = [p for p in module.parameters(recurse=False) if p.requires_grad]
    return next((p for p in own if p.dim() >= 2), own[0] if own else None)


def _layer_modules(model):
    """(name, module, weight) of each module with a trainable parameter of its own, in registration order."""
    return [(name, m, w) for name, m in model.named_modules() for w in [_own_weight(m)] if w is not None]


def _shapes(model):
    return [(list(w.shape), isinstance(m, torch.nn.Embedding) and w is m.weight) for _, m, w in _layer_modules(model)]


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for o in output:
            if isinstance(o, torch.Tensor):
                return o
    return None


def _default_loss(model, batch):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise _gradflow.UsageError("gradflow.coord_check: give data=(inputs, targets), or loss_fn=lambda model, data: ... "
                                   "that returns the loss")
    inputs, targets = batch
    out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
    out = _first_tensor(out)
    if out is None:
        raise _gradflow.UsageError("gradflow.coord_check: the model returned no tensor: pass loss_fn=lambda model, data: ...")
    if out.dim() == 0:
        return out
    if not targets.is_floating_point():
        return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1))
    return torch.nn.functional.mse_loss(out, targets)


def _optimizer_kind(optimizer):
    name = type(optimizer).__name__.lower()
    if "adam" in name:
        return "adam"
    if name == "sgd":
        return "sgd"
    return None


def _describe(first, last, widths):
    """The optimizer as the first width's run made it, with the last width's rates where they differ (µP's)."""
    return _gradflow._optimizer_text(type(first).__name__, [g["lr"] for g in first.param_groups], widths[0],
                                     [g["lr"] for g in last.param_groups], widths[-1])


def _size(t):
    """mean |t| in double, where t is (no transfer): a 0-dim tensor; None for no tensor."""
    if t is None:
        return None
    t = t.detach()
    return (t.to_dense() if t.is_sparse else t).abs().mean(dtype=torch.float64)


class _Capture:
    """Each layer's figures in the current step, taken from its first call's output as the module
    returns it (a program may change that output in place afterwards: nanoGPT-mup scales its last
    norm's output) and from the gradient with respect to that value (a hook registered before any
    in-place change receives it)."""

    def __init__(self, modules):
        self.step, self.initial, self.sizes, self.grads = 0, {}, {}, {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules]

    def begin(self, step):
        self.step, self.sizes, self.grads = step, {}, {}

    def _hook(self, name):
        def hook(module, inputs, output):
            t = _first_tensor(output)
            if name in self.sizes or t is None or not t.requires_grad:
                return
            h = t.detach()
            if self.step == 0:
                self.initial[name] = h.clone()
            h0 = self.initial.get(name)
            change = None if self.step == 0 or h0 is None or h0.shape != h.shape else _size(h - h0)
            self.sizes[name] = (_size(h), change)
            t.register_hook(lambda g: self.grads.__setitem__(name, _size(g)))
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _tied_to(modules):
    """For each layer, the earlier layer whose weight is the same Parameter ("" for none)."""
    first = {}
    out = []
    for name, _, w in modules:
        out.append(first.get(id(w), ""))
        first.setdefault(id(w), name)
    return out


def _train_one_width(make_model, width, data, optimizer_factory, loss_fn, steps, seed):
    torch.manual_seed(seed)
    model = make_model(width)
    optimizer = optimizer_factory(model)
    modules = _layer_modules(model)
    names = [n for n, _, _ in modules]
    capture = _Capture([(n, m) for n, m, _ in modules])
    figures = []  # [step][layer][quantity]
    try:
        model.train()
        for t in range(steps):
            capture.begin(t)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, data)
            if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
                raise _gradflow.UsageError("gradflow.coord_check: the loss must be a scalar tensor")
            loss.backward()
            weight_grads = [_size(w.grad) for _, _, w in modules]
            before = [w.detach().clone() for _, _, w in modules]
            optimizer.step()
            tensors = []
            for (name, _, w), w0, gw in zip(modules, before, weight_grads):
                act, change = capture.sizes.get(name, (None, None))
                tensors += [act, change, capture.grads.get(name), gw, w.detach() - w0]
            sizes = _gradflow._coordinate_sizes([_EMPTY if x is None else x for x in tensors])
            n = len(QUANTITIES)
            figures.append([sizes[i * n:(i + 1) * n] for i in range(len(modules))])
    finally:
        capture.remove()
    return names, _shapes(model), figures, optimizer, _tied_to(modules)


def _mean_over_seeds(runs):
    """The figures of several initialisations at one width, averaged cell by cell."""
    first = runs[0]
    figures = [[[sum(run[2][t][l][q] for run in runs) / len(runs) for q in range(len(QUANTITIES))]
                for l in range(len(first[0]))] for t in range(len(first[2]))]
    return (first[0], first[1], figures) + tuple(first[3:])


def coord_check(make_model, widths, data, optimizer_factory, *, steps=4, loss_fn=None, seed=0, seeds=1, label=None, out=None,
                tolerance=0.25, force=False):
    """The coordinate check of a model family across widths (Tensor Programs V's, with gradients and updates).

    make_model(width) -> torch.nn.Module      one model per width, the same family
    widths                                     at least two, increasing, e.g. [64, 128, 256, 512]
    data                                       one batch, trained on at every step: (inputs, targets), or
                                               anything loss_fn takes
    optimizer_factory(model) -> optimizer      e.g. lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)
    loss_fn(model, data) -> scalar loss        default: model(inputs), then cross-entropy for integer
                                               targets, MSE otherwise (a scalar output is the loss)

    Each width's model is built after torch.manual_seed(seed) and trained for `steps` steps on the
    same batch (seeds=N: N models per width, from seed, seed + 1, ..., each figure their mean).
    Every module with a trainable parameter of its own records, per step, mean |x| of its output
    h_t (as the module returned it), of h_t - h_0, of dL/dh_t, of its weight's gradient and of its
    weight's update (its weight: its first own parameter of two or more dimensions, else its
    first; a module called twice in a forward: its first call). Each weight's kind (input, hidden,
    readout, fixed) is read from its shapes at the first two widths; a weight shared with an
    earlier layer (a tied read-out) is named. Returns a CoordCheckResult; with out=, writes
    coord_check.json, report.html and report.md there.
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2 or any(b <= a for a, b in zip(widths, widths[1:])):
        raise _gradflow.UsageError(f"gradflow.coord_check: give at least two increasing widths, e.g. [64, 128, 256] (got {widths})")
    if int(steps) < 1:
        raise _gradflow.UsageError(f"gradflow.coord_check: steps must be at least 1 (got {steps})")
    if int(seeds) < 1:
        raise _gradflow.UsageError(f"gradflow.coord_check: seeds must be at least 1 (got {seeds})")
    loss_fn = loss_fn or _default_loss
    # The check seeds torch for each model; the program's own random sequence goes on afterwards
    # as if it had not run.
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        runs = [_mean_over_seeds([_train_one_width(make_model, w, data, optimizer_factory, loss_fn, int(steps), seed + s)
                                  for s in range(int(seeds))]) for w in widths]
    names = runs[0][0]
    for w, run in zip(widths, runs):
        if run[0] != names:
            raise _gradflow.UsageError(f"gradflow.coord_check: the model at width {w} has other weighted modules than at width "
                                       f"{widths[0]}: make_model must build the same layers at every width")
    if not names:
        raise _gradflow.UsageError("gradflow.coord_check: the model has no module with a trainable parameter of its own")
    kinds = _gradflow._weight_kinds(runs[0][1], runs[1][1])
    optimizer = runs[0][3]
    tied = runs[0][4]
    check = {
        "label": label or getattr(make_model, "__name__", "model"),
        "optimizer": _describe(optimizer, runs[-1][3], widths),
        "optimizer_kind": _optimizer_kind(optimizer),
        "widths": widths,
        "steps": int(steps),
        "seeds": int(seeds),
        "layers": [dict({"name": n, "kind": k}, **({"tied_to": t} if t else {})) for n, k, t in zip(names, kinds, tied)],
        "figures": {q: [[[None if math.isnan(runs[w][2][t][l][qi]) else runs[w][2][t][l][qi] for w in range(len(widths))]
                         for l in range(len(names))] for t in range(int(steps))]
                    for qi, q in enumerate(QUANTITIES)},
    }
    text = json.dumps({"schema": "gradflow.coord_check/1", "checks": [check]})
    analysis = _gradflow._analyse_coord_checks(text, float(tolerance))[0]
    if out is not None:
        _gradflow._write_coord_report(text, str(out), float(tolerance), bool(force))
    return CoordCheckResult(check, analysis, None if out is None else str(out))
