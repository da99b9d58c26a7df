"""How the gradflow Monitor learns what happens outside backward: the optimizer's step, and
DistributedDataParallel's allreduce (its figures ride in the last gradient bucket)."""
import collections
import functools
import sys
import types
import warnings
import weakref

import torch

from ._gradflow import UsageError


def _tell_step_size(monitor, optimizer):
    """Plain or heavy-ball SGD (one step size, no dampening, no Nesterov): its step size bounds the
    sharpness it is stable at. An adaptive optimizer has no such bound and is not told."""
    if type(optimizer) is not torch.optim.SGD or not optimizer.param_groups:
        return
    group = optimizer.param_groups[0]
    lrs = {g["lr"] for g in optimizer.param_groups}
    if len(lrs) == 1 and not group.get("nesterov", False) and group.get("dampening", 0) == 0:
        monitor.set_learning_rate(float(group["lr"]), float(group.get("momentum", 0.0)))


def wrap_optimizer_step(monitor, optimizer):
    """Makes optimizer.step tell the Monitor where it begins and ends; returns a function that
    detaches it again.

    The wrapper is a bound method of the optimizer, as its own step is, so that learning-rate
    schedulers (which wrap optimizer.step again) and GradScaler.step keep working. Detaching puts
    the optimizer's step back when nothing wrapped ours since; otherwise ours stays in the chain
    and only passes the call on, so that a scheduler's wrapper around it keeps counting.
    """
    step = optimizer.step
    state = getattr(step, "_gradflow_state", None)  # a scheduler's wrapper copies it from ours
    if state is not None and state["monitor"] is not None and state["monitor"]() is not None:
        raise UsageError("this optimizer is already attached to a gradflow Monitor: attach it to one Monitor")
    state = {"monitor": weakref.ref(monitor)}

    @functools.wraps(step)
    def gradflow_step(self, *args, **kwargs):
        m = state["monitor"]() if state["monitor"] is not None else None
        if m is None:
            return step(*args, **kwargs)
        _tell_step_size(m, self)
        m.begin_optimizer_step()
        try:
            result = step(*args, **kwargs)
        except BaseException:
            m.end_optimizer_step(None)
            raise
        m.end_optimizer_step(_loss_value(result))
        return result

    gradflow_step._gradflow_state = state
    ours = types.MethodType(gradflow_step, optimizer)
    optimizer.step = ours

    def detach():
        state["monitor"] = None
        if optimizer.step == ours:
            optimizer.step = step

    return detach


def _loss_value(result):
    """What optimizer.step returned, as a number (a closure's loss), or None."""
    if isinstance(result, torch.Tensor) and result.numel() == 1:
        return float(result.detach())  # (a closure's loss still requires grad: torch 2 warns at its float())
    if isinstance(result, (int, float)):
        return float(result)
    return None


def figures_comm_hook(monitor, process_group):
    """DistributedDataParallel's communication hook with gradflow's figures inside: each bucket is
    averaged as DDP's reducer does without a hook (times 1/world size, allreduce sum); the last one
    carries every rank's recorded figures as a zero-padded block, so recording adds no collective.
    A function (DDP reads the hook's name)."""
    ref = weakref.ref(monitor)
    world = process_group.size()

    def gradflow_figures_hook(state, bucket):
        buf = bucket.buffer()
        buf.mul_(1.0 / world)  # as DDP's own reducer does (times 1/world, not divided by world)
        m = ref()
        block = m._figures_block(buf) if m is not None and bucket.is_last() else None
        if block is None:
            return process_group.allreduce([buf]).get_future().then(lambda fut: fut.value()[0])
        n = buf.numel()

        def unpack(fut):
            out = fut.value()[0]
            receiver = ref()
            if receiver is not None:
                receiver._receive_figures_block(out[n:])
            buf.copy_(out[:n])
            return buf

        return process_group.allreduce([torch.cat([buf, block])]).get_future().then(unpack)

    return gradflow_figures_hook


def follow_ddp(monitor, ddp):
    """Registers the figures hook on a DistributedDataParallel model."""
    group = ddp.process_group
    monitor._follow_data_parallel(group.rank(), group.size())
    try:
        ddp.register_comm_hook(None, figures_comm_hook(monitor, group))
    except RuntimeError as e:
        if "once" not in str(e):
            raise
        raise UsageError(
            "this DistributedDataParallel model already has a communication hook, and DDP takes one: gradflow's "
            "figures ride in DDP's allreduce through its own (which averages as DDP's default does); monitor a model "
            "without a hook, or train without DDP: gradflow.Monitor(model, process_group=...) and "
            "monitor.average_gradients()") from None


def _dtensor_type():
    """torch.distributed's DTensor class, or None while no program of this process has loaded it
    (no tensor can be one then; importing it here would change the program's warning filters)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def sharding(model):
    """The model's parameters held in parts across ranks (DTensor: FSDP2's fully_shard,
    distribute_module, parallelize_module) as the Monitor reads them: which rank's part counts
    toward each (a replicated part counts once), how to read a part, and the one collective that
    brings every rank's sums to every rank; None when it has none."""
    dtensor = _dtensor_type()
    parts = {n: p for n, p in model.named_parameters() if dtensor is not None and isinstance(p, dtensor) and p.requires_grad}
    if not parts:
        return None
    dist = torch.distributed
    world = dist.get_world_size()
    counted = {name: _counted_parts(name, p, world) for name, p in parts.items()}
    group = dist.group.WORLD
    return {"rank": dist.get_rank(), "world_size": world, "counted": counted, "local_part": _local_part,
            "output_part": _output_part, "gather_rows": functools.partial(_gather_rows, group, world)}


def _counted_parts(name, p, world):
    """For each rank, whether its part of DTensor `p` counts toward the whole: it does unless it is
    a copy, on a mesh dimension `p` is not sharded along, of the part held at coordinate 0 there."""
    ranks = p.device_mesh.mesh
    if ranks.numel() != world:
        raise UsageError(f"parameter '{name}' is held on a mesh of {ranks.numel()} of the {world} ranks: gradflow combines "
                         "the parts of sharded parameters over every rank of the default process group; shard them over "
                         "a mesh of all ranks")
    counted = []
    for rank in range(world):
        coord = (ranks == rank).nonzero()[0].tolist()
        counted.append(all(c == 0 for c, placement in zip(coord, p.placements) if not placement.is_shard()))
    return counted


def _local_part(t):
    """This rank's part of a DTensor, as a plain tensor. A gradient still partial (each rank holds
    a summand, not a part) is summed over the ranks first."""
    with torch.no_grad():
        if any(placement.is_partial() for placement in t.placements):
            from torch.distributed.tensor import Replicate
            t = t.redistribute(t.device_mesh, [Replicate() if pl.is_partial() else pl for pl in t.placements])
        return t.to_local()


def _output_part(t):
    """This rank's share of a DTensor layer output's gradient, where it arrives sharded; None where
    it arrives whole on every rank or as summands (a plan's output converted after the module
    returned it): then no rank's part is the gradient of what that rank's next layer consumed."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(t, dtensor):
        return _waited(t)
    if not all(placement.is_shard() for placement in t.placements):
        return None
    with torch.no_grad():
        return _waited(t.to_local())


def _waited(t):
    """A collective's pending result (functional collectives' AsyncCollectiveTensor) as the tensor it
    becomes; any other tensor as it is."""
    pending = getattr(sys.modules.get("torch.distributed._functional_collectives"), "AsyncCollectiveTensor", None)
    return t.wait() if pending is not None and isinstance(t, pending) else t


def _gather_rows(group, world, row):
    """Every rank's row (the same length on each), as a world × length tensor: one all_gather."""
    if torch.distributed.get_backend(group) == "nccl":
        row = row.to(torch.device("cuda", torch.cuda.current_device()))
    rows = row.new_empty(world * row.numel())
    torch.distributed.all_gather_into_tensor(rows, row.contiguous(), group=group)
    return rows.view(world, -1)


def hook_sharded_gradients(monitor, model, sharding):
    """Tells the Monitor when each sharded parameter has its gradient: its post-accumulate hook,
    which autograd calls for a DTensor leaf and FSDP2 after its reduce-scatter. Returns a function
    that removes the hooks."""
    ref = weakref.ref(monitor)
    handles = []
    for name, p in model.named_parameters():
        if name in sharding["counted"]:
            def arrived(_, name=name):
                m = ref()
                if m is not None:
                    m._sharded_gradient(name)
            handles.append(p.register_post_accumulate_grad_hook(arrived))

    def detach():
        for handle in handles:
            handle.remove()
        handles.clear()

    return detach


def attached_parameters(model):
    """(the model, the trainable parameters the Monitor attaches to), held until the first watch(),
    or None for a model that is no torch.nn.Module (a TorchScript module's are the C++ Monitor's)."""
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None
    return weakref.ref(model), [p for p in model.parameters() if p.requires_grad]


def say_if_parameters_replaced(attached):
    """One line on stderr when the model no longer holds the parameters the Monitor attached to
    (fully_shard, to_empty(), load_state_dict(assign=True) after it): their gradients never arrive."""
    model_ref, params = attached
    model = model_ref()
    if model is None or not params:
        return
    now = {id(p) for p in model.parameters()}
    gone = sum(1 for p in params if id(p) not in now)
    if gone:
        sys.stderr.write(f"gradflow: {gone} of the {len(params)} parameters this Monitor attached to are no longer the "
                         "model's (replaced after it: fully_shard, to_empty(), load_state_dict(assign=True)); their "
                         "gradients are not recorded: create the Monitor after the model's parameters are final\n")


_ROOT = "(root)"  # the module path of the model's own parameters, as the Monitor names it
_ParametrizationList = torch.nn.utils.parametrize.ParametrizationList
_Packed = torch.nn.utils.rnn.PackedSequence


def is_ddp(model):
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _is_compiled(model):
    """torch.compile's wrapper of a module (its parameters are the module's, named `_orig_mod.`)."""
    frame = sys.modules.get("torch._dynamo.eval_frame")  # nothing is compiled before torch loads it
    return frame is not None and isinstance(model, frame.OptimizedModule)


def unwrap(model):
    """(the DistributedDataParallel wrapper or None, the module inside every wrapper): the model as
    eager code names its parameters and calls its modules, whichever order torch.compile and DDP
    wrap it in."""
    ddp = None
    while True:
        if _is_compiled(model):
            model = model._orig_mod
        elif ddp is None and is_ddp(model):
            ddp, model = model, model.module
        else:
            return ddp, model


# Inside a graph torch.compile traces, module hooks are traced too: gradflow's must not call into
# its C++ part there (each call would break the graph). torch 1.x has no torch.compiler.
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)

# torch warns at each call of a compiled module while any global module hook exists, that the
# hook also fires for the compiled wrapper; gradflow's hook ignores every module it does not
# watch, and it never watches the wrapper.
_COMPILED_WRAPPER_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks on modules"


class _Watched:
    """Which modules name their outputs to a Monitor, and how: kept outside the modules, behind
    one forward hook on torch's global list, so that pickling, torch.save, copy.deepcopy and
    torch.jit.script of a model find nothing of gradflow in it, and a copy of a watched module
    (an EMA model, a target network, a spawned worker's) is not watched."""

    def __init__(self):
        self._hooks = {}     # id(module) -> the functions its calls' outputs go to
        self._dispatch = {}  # id(module) -> the one function its hook calls (they, in turn)
        self._alive = {}     # id(module) -> a weak reference whose callback forgets it
        self._handle = None
        self._quiet = None   # the warnings filter entry, while the hook is the process's only global one
        # The Monitor whose reentrant checkpoint segment is being recomputed (a weak reference),
        # while it wants every call's output (Monitor.set_recomputation_listener in C++).
        self.recomputing = None

    def add(self, module, hook):
        key = id(module)
        if key not in self._alive:
            self._alive[key] = weakref.ref(module, lambda _, key=key: self._forget(key))
        self._hooks.setdefault(key, []).append(hook)
        self._update(key)
        if self._handle is None:
            self._handle = torch.nn.modules.module.register_module_forward_hook(self._on_output)
        self._quiet_compiled_wrapper_warning()
        return key, hook

    def _quiet_compiled_wrapper_warning(self):
        # Put in front again at each Monitor: a catch_warnings block may have dropped it since, or a
        # simplefilter gone ahead of it. Not where the program hooks modules globally too: torch's
        # warning is then about its hook.
        if _program_hooks_modules_globally(self._handle.id):
            return
        warnings.filterwarnings("ignore", message=_COMPILED_WRAPPER_WARNING, category=UserWarning)
        self._quiet = warnings.filters[0]

    def _unhook_globally(self):
        self._handle.remove()
        self._handle = None
        # (An "ignore" entry leaves nothing in the warning registries to invalidate.)
        if self._quiet in warnings.filters:
            warnings.filters.remove(self._quiet)
        self._quiet = None

    def remove(self, entry):
        key, hook = entry
        hooks = self._hooks.get(key)
        if hooks is not None and hook in hooks:
            hooks.remove(hook)
            self._update(key) if hooks else self._forget(key)

    def _update(self, key):
        hooks = tuple(self._hooks[key])
        if len(hooks) == 1:
            self._dispatch[key] = hooks[0]
            return

        def each(module, inputs, output):
            for hook in hooks:
                hook(module, inputs, output)
        self._dispatch[key] = each

    def _forget(self, key):
        self._hooks.pop(key, None)
        self._dispatch.pop(key, None)
        self._alive.pop(key, None)
        if not self._hooks and self._handle is not None:
            self._unhook_globally()

    def _on_output(self, module, inputs, output):
        if _compiling():
            return None
        # Called for every module's every call in the process: the unwatched pay one lookup.
        hook = self._dispatch.get(id(module))
        if self.recomputing is not None:
            _segment_output(self.recomputing, output)
        if hook is not None:
            hook(module, inputs, output)
        return None


def _program_hooks_modules_globally(ours):
    """Whether a global module hook other than the one whose handle id is `ours` exists."""
    tables = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_pre_hooks", "_global_backward_hooks")
    return any(key != ours for name in tables for key in getattr(torch.nn.modules.module, name, {}))


def _segment_output(ref, output):
    m = ref()
    t = _first_tensor(output)
    if m is not None and t is not None and t.grad_fn is not None:
        m._segment_output(t)


def listen_to_recomputation(monitor):
    """Lets the Monitor learn each call's output while it recomputes a checkpointed segment."""
    ref = weakref.ref(monitor)

    def listener(on):
        _WATCHED.recomputing = ref if on else None

    monitor._set_recomputation_listener(listener)


_WATCHED = _Watched()


def hook_module_outputs(monitor, model):
    """Every module with a trainable parameter of its own names each call's output to the Monitor
    under the module's name, so that its series holds dL/d(output) as the module returned it (the
    first tensor of a tuple output: an RNN's sequence, an attention's output), before the
    module's own forward hooks. Returns what unhook_module_outputs takes."""
    ref = weakref.ref(monitor)
    entries = []
    for name, module in model.named_modules():
        if not is_layer(module):
            continue
        if _layered(module):
            hook = _layers_hook(ref, name or _ROOT, module)
        else:
            hook = _output_hook(ref, name or _ROOT, _time_dim(module))
        entries.append(_WATCHED.add(module, hook))
    return entries


def is_layer(module):
    """A module whose output is a layer output: one with a trainable parameter of its own, or a
    weight computed from parameters (torch.nn.utils.parametrize). The computation of such a
    weight (a ParametrizationList, called when the weight is read) is part of its module, never a
    layer: its parameters are recorded as parameters only."""
    if isinstance(module, _ParametrizationList):
        return False
    own = any(p.requires_grad for p in module.parameters(recurse=False))
    return own or torch.nn.utils.parametrize.is_parametrized(module)


def unhook_module_outputs(entries):
    for entry in entries:
        _WATCHED.remove(entry)


def _layered(module):
    """A fused recurrent module of several layers: recorded per layer (both directions of a
    bidirectional layer together, as the next layer receives them)."""
    return isinstance(module, torch.nn.RNNBase) and module.num_layers > 1


def _layers_hook(ref, name, module):
    """Each layer of a fused nn.LSTM/GRU/RNN as its own series, "rnn.l0" .. : the gradient that
    reaches the layer's output sequence, one entry per time step. Where the module's graph does
    not show its layers (a cuDNN kernel, a packed sequence), the module's output, as for any
    module."""
    time_dim = _time_dim(module)
    num_layers = module.num_layers
    # A layer's sequence: its steps stacked, or output 0 of the op computing the whole layer (the
    # oneDNN kernel torch 2 runs float LSTMs on the CPU with), or a bidirectional layer's two
    # directions joined along the features.
    joins = ("CatBackward0",) if module.bidirectional else ("StackBackward0", "MkldnnRnnLayerBackward0")

    layer_names = ["l{}".format(k) if name == _ROOT else "{}.l{}".format(name, k) for k in range(num_layers)]
    note_order = _order_noter(ref, [(n, name) for n in layer_names])

    def gradflow_layers_hook(module, inputs, output):
        m = _recording(ref)
        if m is None:
            if _outside_autograd(module):
                note_order()
            return None
        t = _first_tensor(output)
        layers = _layer_sequences(t, num_layers, joins) if t is not None and not _packed(output) else None
        if layers is None:
            _name_output(m, output, name, time_dim)
            return None
        for node, layer_name in zip(layers, layer_names):
            m._layer_sequence(node, layer_name, name)
        return None

    return gradflow_layers_hook


def _layer_sequences(t, num_layers, joins):
    """The nodes (of a type in `joins`) that make each layer's output sequence, layer 0 first; None
    unless there is one per layer."""
    if t.grad_fn is None:
        return None
    found, seen, queue = [], set(), collections.deque([t.grad_fn])
    while queue and len(found) < num_layers:
        node = queue.popleft()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in joins:
            found.append(node)
        queue.extend(child for child, _ in node.next_functions)
    return found[::-1] if len(found) == num_layers else None


def _recording(ref):
    """The Monitor when this forward's outputs are to be recorded (it lives, the step is recorded,
    gradients are on, and no torch.jit.trace runs the forward to record it), else None: a step in
    between costs this check."""
    if not torch.is_grad_enabled() or torch._C._is_tracing():
        return None
    m = ref()
    return m if m is not None and m.recording else None


def _outside_autograd(module):
    """A training-mode forward without autograd: the first forward of a reentrant checkpoint's
    segment (an evaluation puts its modules in eval mode)."""
    return module.training and not torch.is_grad_enabled()


def _order_noter(ref, series):
    """Outputs computed without autograd cannot be hooked; their series take their place in
    forward order, where the segment's recomputation inside the backward records them. A place,
    once taken, is kept: later calls cost nothing (an RL target or a teacher under no_grad)."""
    noted = False

    def note():
        nonlocal noted
        m = None if noted else ref()
        if m is not None and m.recording:
            for name, module_name in series:
                m._layer_sequence(None, name, module_name)
            noted = True

    return note


def _packed(output):
    return isinstance(output, tuple) and len(output) > 0 and isinstance(output[0], _Packed)


def _name_output(m, output, name, time_dim):
    t = _first_tensor(output)
    if t is not None and t.grad_fn is not None:
        m._layer_output(t, name, time_dim(t) if time_dim is not None and not _packed(output) else -1)


def _output_hook(ref, name, time_dim):
    note_order = _order_noter(ref, [(name, name)])

    def gradflow_output_hook(module, inputs, output):
        m = _recording(ref)
        if m is not None:
            _name_output(m, output, name, time_dim)
        elif _outside_autograd(module):
            note_order()
        return None

    return gradflow_output_hook


def _time_dim(module):
    """For a recurrent module's output sequence, the function giving its time dimension."""
    if not isinstance(module, torch.nn.RNNBase):
        return None
    batch_first = bool(getattr(module, "batch_first", False))
    # (T, B, H), (B, T, H) when batch_first, (T, H) unbatched.
    return lambda t: (1 if batch_first else 0) if t.dim() == 3 else (0 if t.dim() == 2 else -1)


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, _Packed):
        return output.data  # its time steps are interleaved there: no sequence to profile
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


_ACTIVATIONS = [
    (torch.nn.ReLU, "relu"), (torch.nn.LeakyReLU, "leaky_relu"), (torch.nn.GELU, "gelu"), (torch.nn.Tanh, "tanh"),
    (torch.nn.Sigmoid, "sigmoid"), (torch.nn.ELU, "elu"), (torch.nn.SELU, "selu"), (torch.nn.Softsign, "softsign"),
]
_CELLS = [
    ((torch.nn.LSTM, torch.nn.LSTMCell), "lstm"), ((torch.nn.GRU, torch.nn.GRUCell), "gru"),
]


def model_traits(model):
    """What the module tree shows of the architecture, as traits= keys: normalisation layers, a
    recurrent cell, the one activation module kind it uses (a functional activation is not
    seen), and the LayerNorm placement of torch.nn.Transformer*Layer. Other residual connections
    and the initialisation are not visible in it."""
    traits = {}
    modules = [m for _, m in model.named_modules()]
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules):
        traits["norm"] = "batch"
    elif any(isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) for m in modules):
        traits["norm"] = "layer"
    for kinds, cell in _CELLS:
        if any(isinstance(m, kinds) for m in modules):
            traits.update(recurrent=True, cell=cell)
            break
    else:
        rnn = [m for m in modules if isinstance(m, (torch.nn.RNN, torch.nn.RNNCell))]
        if rnn:
            traits.update(recurrent=True, cell="rnn_relu" if rnn[0].nonlinearity == "relu" else "rnn_tanh")
    used = {name for kind, name in _ACTIVATIONS if any(type(m) is kind for m in modules)}
    if len(used) == 1:
        traits["activation"] = used.pop()
    # PyTorch's own Transformer layers say where their LayerNorm sits (norm_first), and add
    # their branches to the stream.
    layers = [m for m in modules if isinstance(m, (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer))]
    placements = {"pre" if getattr(m, "norm_first", False) else "post" for m in layers}
    if len(placements) == 1:
        traits.update(norm_placement=placements.pop(), residual=True)
    return traits
