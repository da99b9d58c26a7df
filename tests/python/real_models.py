"""Real PyTorch training programs, small enough for a unit test, for test_real_models.py.

Each model and loop mirrors a public program's structure (the names of its modules, its
optimiser, its clipping, how often a module is called per step), shrunk to train 20-40 steps on
synthetic data in a few seconds on one CPU thread:

- TransformerLM: the PyTorch tutorial's TransformerModel (pytorch/examples
  word_language_model/model.py, "Language Modeling with nn.Transformer"): nn.Embedding scaled by
  sqrt(d_model), sinusoidal PositionalEncoding, nn.TransformerEncoder, a Linear decoder, a causal
  square mask; SGD with clip_grad_norm_(0.5). norm_first=True is its pre-LN variant.
- GPT: minGPT / nanoGPT's model.py: CausalSelfAttention (c_attn, c_proj), MLP (c_fc, GELU,
  c_proj), pre-LN Block (ln_1, ln_2), wte + wpe, ln_f, lm_head tied to wte; AdamW, clip 1.0.
- RNNModel: word_language_model's LSTM model (encoder, dropout, 2-layer fused nn.LSTM, decoder
  tied to the encoder), repackage_hidden, clip_grad_norm_(0.25) and the hand-written SGD
  update p.data.add_(p.grad, alpha=-lr).
- Sequence: time_sequence_prediction: two stacked nn.LSTMCell called at every time step, a Linear
  output at every time step, MSE over all of them, LBFGS with a closure, in double.
- torchvision resnet18 / mobilenet_v2 (num_classes=10) on 32x32 images, SGD with momentum
  (pytorch/examples imagenet's loop).
- SiameseNetwork: pytorch/examples siamese_network's forward_once called on each image of the
  pair (cnn, flatten, fc), with the contrastive loss on the embeddings' distance that most public
  siamese programs use, Adadelta lr 1 as the example.
- VAE: pytorch/examples vae (fc1, fc21/fc22 for mu/logvar, reparameterize, fc3, fc4, BCE + KLD,
  Adam 1e-3).
- Policy: pytorch/examples reinforcement_learning/actor_critic.py (affine1, action_head,
  value_head, the policy called once per environment step, SavedAction, finish_episode with
  normalised returns and smooth_l1_loss) on a hand-written corridor environment.
- GAN: a generator and a discriminator (DCGAN's loop: D on real, D on fake.detach(), G through
  D), Adam(2e-4, betas=(0.5, 0.999)) each, on a ring of 8 Gaussians (examples/gan/main.cpp).
- The TransformerLM and the RNNModel again as torch.jit.script modules (run_scripted), each with
  its eager twin as the reference.

Each run_* function trains with a gradflow.Monitor and an independent GradRecorder (plain
PyTorch forward hooks and tensor hooks), and returns a Run holding both.
"""
import copy
import math
import random
from collections import namedtuple
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradflow


# ---------------------------------------------------------------------------------------------
# The independent reference: what a forward hook on each module's output receives.


def first_tensor(output):
    """The first tensor of a module's output (a tuple's first element: an RNN's sequence, an
    attention's output, an LSTMCell's h)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            t = first_tensor(item)
            if t is not None:
                return t
    return None


def finite_sq(g):
    """Sum of squares of the finite elements, in double."""
    g = g.detach().double().reshape(-1)
    if not bool(torch.isfinite(g).all()):
        g = g[torch.isfinite(g)]
    return torch.dot(g, g).item()


class GradRecorder:
    """For every module with a trainable parameter of its own: a forward hook that takes the
    first tensor of each call's output and registers a tensor hook on it, which stores
    dL/d(output) as the sum of squares per call (per time step too for nn.RNNBase outputs).
    Parameter gradients are read from p.grad when snapshot_params() is called."""

    def __init__(self, model):
        self.model = model
        self.steps = []  # per step: {module name: [call, ...]}, call = {"sq": float or None, "time": [...]}
        self.params = []  # per step: {parameter name: norm of p.grad}
        self.enabled = True
        self.current = None
        self.handles = []
        for name, module in model.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self.handles.append(module.register_forward_hook(self._forward_hook(name or "(root)", module)))

    def _forward_hook(self, name, module):
        time_dim = None
        if isinstance(module, nn.RNNBase):
            time_dim = 1 if module.batch_first else 0

        def hook(mod, inputs, output):
            if not self.enabled or self.current is None or not torch.is_grad_enabled():
                return None
            t = first_tensor(output)
            if t is None or t.grad_fn is None:
                return None
            call = {"sq": None, "time": None}
            self.current.setdefault(name, []).append(call)

            def grad_hook(g):
                call["sq"] = (call["sq"] or 0.0) + finite_sq(g)
                if time_dim is not None and g.dim() == 3:
                    g64 = g.detach().double().transpose(0, time_dim)
                    per_t = [finite_sq(g64[i]) for i in range(g64.shape[0])]
                    if call["time"] is None:
                        call["time"] = per_t
                    else:
                        call["time"] = [a + b for a, b in zip(call["time"], per_t)]
                return None

            t.register_hook(grad_hook)
            return None

        return hook

    def begin_step(self):
        self.current = {}
        self.steps.append(self.current)
        self.params.append({})

    def snapshot_params(self):
        """p.grad's norm now (right after backward: the gradient produced)."""
        self.params[-1] = {n: math.sqrt(finite_sq(p.grad)) for n, p in self.model.named_parameters()
                           if p.requires_grad and p.grad is not None}

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


class Run:
    """What a training run left: the model, its Monitor(s), the reference, the losses."""

    def __init__(self, name, model, monitor, recorder, losses, traits=None, layers_of=None):
        self.name = name
        # A fused recurrent module recorded per layer: its series, layer 0 first; the last one
        # holds the module's output.
        self.layers_of = layers_of or {}
        self.model = model
        self.monitor = monitor
        self.recorder = recorder
        self.losses = losses
        self.traits = traits


def set_seed(seed):
    torch.manual_seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------
# Synthetic data.


def markov_tokens(n, vocab, seed, p_follow=0.9):
    """A token stream where each token is followed by a fixed successor with probability
    p_follow (else a random token): learnable within a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.randperm(vocab, generator=g)
    out = torch.empty(n, dtype=torch.long)
    tok = 0
    for i in range(n):
        out[i] = tok
        if torch.rand(1, generator=g).item() < p_follow:
            tok = int(succ[tok])
        else:
            tok = int(torch.randint(vocab, (1,), generator=g))
    return out


def batchify(data, bsz):
    """word_language_model's batchify: (N,) -> (N // bsz, bsz), a column per stream."""
    nbatch = data.size(0) // bsz
    return data[:nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def prototype_images(n, classes, shape, seed, noise=0.5):
    """Images of `classes` fixed random prototypes plus noise, and their labels."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn((classes,) + tuple(shape), generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    return protos[labels] + noise * torch.randn((n,) + tuple(shape), generator=g), labels


# ---------------------------------------------------------------------------------------------
# 1, 2. The nn.Transformer tutorial's language model (post-LN; norm_first=True: pre-LN).


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=512):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        x = x + self.pe[:x.size(0)]
        return self.dropout(x)


def generate_square_subsequent_mask(sz):
    return torch.triu(torch.full((sz, sz), float("-inf")), diagonal=1)


class TransformerLM(nn.Module):
    nan_at_step: Optional[int]  # typed for torch.jit.script

    def __init__(self, ntoken, d_model, nhead, d_hid, nlayers, dropout=0.1, norm_first=False):
        super().__init__()
        self.model_type = "Transformer"
        self.pos_encoder = PositionalEncoding(d_model, dropout)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout, norm_first=norm_first)
        # Pre-LN stacks end in a LayerNorm of their own (the residual stream is never normalised).
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers,
                                                         norm=nn.LayerNorm(d_model) if norm_first else None)
        self.encoder = nn.Embedding(ntoken, d_model)
        self.d_model = d_model
        self.decoder = nn.Linear(d_model, ntoken)
        self.nan_at_step = None  # broken variant: a NaN in the input of this forward call
        self.calls = 0
        self.init_weights()

    def init_weights(self):
        initrange = 0.1
        self.encoder.weight.data.uniform_(-initrange, initrange)
        self.decoder.bias.data.zero_()
        self.decoder.weight.data.uniform_(-initrange, initrange)

    def forward(self, src, src_mask):
        src = self.encoder(src) * math.sqrt(self.d_model)
        nan_at_step = self.nan_at_step
        if nan_at_step is not None and self.calls == nan_at_step:
            src = src.clone()
            src[0, 0, 0] = float("nan")
        self.calls += 1
        src = self.pos_encoder(src)
        output = self.transformer_encoder(src, src_mask)
        return self.decoder(output)


def run_transformer_lm(norm_first=False, steps=30, seed=0, nan_at_step=None):
    set_seed(seed)
    ntokens, bptt, bsz = 40, 16, 8
    train_data = batchify(markov_tokens(bptt * bsz * steps + bsz, ntokens, seed + 1), bsz)
    # The tutorial's two layers; the pre-LN variant four (pre-LN is chosen for deeper stacks).
    model = TransformerLM(ntokens, d_model=32, nhead=2, d_hid=64, nlayers=4 if norm_first else 2, dropout=0.1,
                          norm_first=norm_first)
    model.nan_at_step = nan_at_step
    criterion = nn.CrossEntropyLoss()
    if norm_first:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        clip = 1.0
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=5.0)  # the tutorial's
        clip = 0.5
    monitor = gradflow.Monitor(model, optimizer=optimizer)
    rec = GradRecorder(model)
    src_mask = generate_square_subsequent_mask(bptt)
    losses = []
    model.train()
    for batch, i in enumerate(range(0, bptt * steps, bptt)):
        data, targets = get_batch(train_data, i, bptt)
        rec.begin_step()
        output = model(data, src_mask[:data.size(0), :data.size(0)])
        loss = criterion(output.view(-1, ntokens), targets)
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    rec.remove()
    return Run("transformer_" + ("pre_ln" if norm_first else "post_ln"), model, monitor, rec, losses,
               traits={"norm": "layer", "residual": True, "clip_norm": clip})


# ---------------------------------------------------------------------------------------------
# 3. minGPT / nanoGPT.


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        assert n_embd % n_head == 0
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.n_embd = n_embd
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout=0.0):
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(n_embd, n_head, block_size, dropout) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long).unsqueeze(0)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


def run_gpt(steps=30, seed=0, zero_grads=False):
    """nanoGPT's train.py loop: get_batch of random windows, AdamW, clip 1.0. zero_grads: a
    hook on every parameter's gradient that returns zeros (the broken variant)."""
    set_seed(seed)
    vocab, block_size, batch_size = 40, 16, 8
    data = markov_tokens(4000, vocab, seed + 1)
    model = GPT(vocab, block_size, n_layer=4, n_head=2, n_embd=32, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    if zero_grads:
        for p in model.parameters():
            p.register_hook(lambda g: torch.zeros_like(g))
    monitor = gradflow.Monitor(model, optimizer=optimizer)
    rec = GradRecorder(model)
    g = torch.Generator().manual_seed(seed + 2)
    losses = []
    for it in range(steps):
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=g)
        x = torch.stack([data[i:i + block_size] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
        rec.begin_step()
        _, loss = model(x, y)
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    rec.remove()
    return Run("gpt", model, monitor, rec, losses,
               traits={"activation": "gelu", "norm": "layer", "residual": True, "clip_norm": 1.0})


# ---------------------------------------------------------------------------------------------
# 4. word_language_model's LSTM.


class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder."""

    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.2, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            assert nhid == ninp
            self.decoder.weight = self.encoder.weight
        self.init_weights()
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden: Tuple[torch.Tensor, torch.Tensor]):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def repackage_hidden(h):
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def run_lstm_lm(steps=30, seed=0, lr=20.0, clip=0.25, tied=True):
    set_seed(seed)
    ntokens, bptt, bsz = 40, 16, 8
    train_data = batchify(markov_tokens(bptt * bsz * steps + bsz, ntokens, seed + 1), bsz)
    model = RNNModel(ntokens, 32, 32, 2, dropout=0.2, tie_weights=tied)
    criterion = nn.NLLLoss()
    traits = {"cell": "lstm", "recurrent": True}
    if clip is not None:
        traits["clip_norm"] = clip
    monitor = gradflow.Monitor(model)  # no optimizer: the update is written by hand
    rec = GradRecorder(model)
    losses = []
    model.train()
    hidden = model.init_hidden(bsz)
    for batch, i in enumerate(range(0, bptt * steps, bptt)):
        data, targets = get_batch(train_data, i, bptt)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        rec.begin_step()
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        losses.append(loss.item())
    rec.remove()
    return Run("lstm_lm", model, monitor, rec, losses, traits=traits, layers_of={"rnn": ["rnn.l0", "rnn.l1"]})


# ---------------------------------------------------------------------------------------------
# 5. time_sequence_prediction: two LSTMCells called at every time step.


class Sequence(nn.Module):
    def __init__(self, hidden=20):
        super().__init__()
        self.hidden = hidden
        self.lstm1 = nn.LSTMCell(1, hidden)
        self.lstm2 = nn.LSTMCell(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        c_t = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        h_t2 = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        c_t2 = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for _ in range(future):
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        return torch.cat(outputs, dim=1)


def sine_waves(n, length, period, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(length, dtype=torch.double).unsqueeze(0) + torch.randint(-4 * period, 4 * period, (n, 1), generator=g)
    return torch.sin(x / period * 2 * math.pi / 8).double()


def run_time_sequence(opt_steps=3, seed=0, max_iter=8):
    """train.py of time_sequence_prediction: LBFGS(lr=0.8) with a closure; every evaluation of
    the closure is a step of the Monitor (and of the reference)."""
    set_seed(seed)
    data = sine_waves(12, 33, 4, seed + 1)
    input, target = data[:, :-1], data[:, 1:]
    seq = Sequence(hidden=20).double()
    criterion = nn.MSELoss()
    optimizer = torch.optim.LBFGS(seq.parameters(), lr=0.8, max_iter=max_iter)
    monitor = gradflow.Monitor(seq, optimizer=optimizer)
    rec = GradRecorder(seq)
    losses = []

    def closure():
        optimizer.zero_grad()
        rec.begin_step()
        out = seq(input)
        loss = criterion(out, target)
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        losses.append(loss.item())
        return loss

    for _ in range(opt_steps):
        optimizer.step(closure)
    rec.remove()
    return Run("time_sequence", seq, monitor, rec, losses, traits={"cell": "lstm", "recurrent": True})


# ---------------------------------------------------------------------------------------------
# 6. torchvision classifiers on 32x32 images.


def run_torchvision(arch, steps=20, seed=0, batch=8):
    import torchvision
    set_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=10)
    x_all, y_all = prototype_images(batch * steps, 10, (3, 32, 32), seed + 1, noise=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    monitor = gradflow.Monitor(model, optimizer=optimizer)
    rec = GradRecorder(model)
    losses = []
    model.train()
    for i in range(steps):
        images, target = x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]
        rec.begin_step()
        output = model(images)
        loss = criterion(output, target)
        monitor.watch(loss)
        optimizer.zero_grad()  # imagenet's order: zero_grad after the forward, before backward
        loss.backward()
        rec.snapshot_params()
        optimizer.step()
        losses.append(loss.item())
    rec.remove()
    traits = {"activation": "relu", "norm": "batch", "residual": True}  # ReLU6 in mobilenet_v2
    return Run(arch, model, monitor, rec, losses, traits=traits)


# ---------------------------------------------------------------------------------------------
# 7. siamese_network: one encoder called on both images.


class SiameseNetwork(nn.Module):
    """forward_once (cnn, then fc) on each image of the pair; the two embeddings go to a
    contrastive loss on their distance (Hadsell et al. 2006)."""

    def __init__(self, deep_sigmoid=False, depth=10):
        super().__init__()
        if deep_sigmoid:  # the broken variant: a deep sigmoid MLP as the embedding network
            layers = [nn.Linear(16 * 16, 32), nn.Sigmoid()]
            for _ in range(depth - 2):
                layers += [nn.Linear(32, 32), nn.Sigmoid()]
            layers += [nn.Linear(32, 16)]
            self.cnn = nn.Flatten()
            self.fc = nn.Sequential(*layers)
        else:
            self.cnn = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d((2, 2)))
            self.fc = nn.Sequential(nn.Linear(16 * 2 * 2, 32), nn.ReLU(inplace=True), nn.Linear(32, 16))

    def forward_once(self, x):
        out = self.cnn(x)
        out = out.view(out.size(0), -1)
        return self.fc(out)

    def forward(self, input1, input2):
        output1 = self.forward_once(input1)
        output2 = self.forward_once(input2)
        return output1, output2


class ContrastiveLoss(nn.Module):
    """label 1: the same class (pulled together), 0: different (pushed to at least margin)."""

    def __init__(self, margin=1.0):
        super().__init__()
        self.margin = margin

    def forward(self, output1, output2, label):
        d = F.pairwise_distance(output1, output2)
        return torch.mean(label * d.pow(2) + (1 - label) * torch.clamp(self.margin - d, min=0.0).pow(2))


def siamese_pairs(n, seed):
    """Pairs of noisy images of 6 prototypes; target 1 for the same prototype, 0 otherwise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(6, 1, 16, 16, generator=g)
    a = torch.randint(6, (n,), generator=g)
    same = torch.rand(n, generator=g) < 0.5
    b = torch.where(same, a, (a + torch.randint(1, 6, (n,), generator=g)) % 6)
    x1 = protos[a] + 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    x2 = protos[b] + 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    return x1, x2, same.float()


def run_siamese(steps=30, seed=0, deep_sigmoid=False):
    set_seed(seed)
    batch = 32
    x1_all, x2_all, t_all = siamese_pairs(batch * steps, seed + 1)
    model = SiameseNetwork(deep_sigmoid=deep_sigmoid)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    criterion = ContrastiveLoss(margin=1.0)
    monitor = gradflow.Monitor(model, optimizer=optimizer)
    rec = GradRecorder(model)
    losses = []
    model.train()
    for i in range(steps):
        sl = slice(i * batch, (i + 1) * batch)
        images_1, images_2, targets = x1_all[sl], x2_all[sl], t_all[sl]
        optimizer.zero_grad()
        rec.begin_step()
        output1, output2 = model(images_1, images_2)
        loss = criterion(output1, output2, targets)
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        optimizer.step()
        losses.append(loss.item())
    rec.remove()
    traits = {"activation": "sigmoid"} if deep_sigmoid else {"activation": "relu", "norm": "batch"}
    return Run("siamese" + ("_deep_sigmoid" if deep_sigmoid else ""), model, monitor, rec, losses, traits=traits)


# ---------------------------------------------------------------------------------------------
# 8. The VAE.


class VAE(nn.Module):
    def __init__(self, d_in=64, d_hidden=48, d_latent=8):
        super().__init__()
        self.d_in = d_in
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc21 = nn.Linear(d_hidden, d_latent)
        self.fc22 = nn.Linear(d_hidden, d_latent)
        self.fc3 = nn.Linear(d_latent, d_hidden)
        self.fc4 = nn.Linear(d_hidden, d_in)
        self.tap = None  # tap(tensor, name, activation): the program's monitor.tap, when it taps

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        if self.tap is not None:
            self.tap(h1, "h.1", "relu")
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        if self.tap is not None:
            self.tap(h3, "h.3", "relu")
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.d_in))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def vae_loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, recon_x.size(1)), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def run_vae(steps=30, seed=0, dead_bias=None):
    """dead_bias: fc1's bias set to this (with weights shrunk) so that no unit of h.1 is ever
    active (the broken variant)."""
    set_seed(seed)
    batch = 32
    g = torch.Generator().manual_seed(seed + 1)
    protos = torch.rand(4, 64, generator=g)
    lab = torch.randint(4, (batch * steps,), generator=g)
    data = (protos[lab] + 0.1 * torch.randn(batch * steps, 64, generator=g)).clamp(0, 1)
    model = VAE()
    if dead_bias is not None:
        with torch.no_grad():
            model.fc1.weight.mul_(0.01)
            model.fc1.bias.fill_(dead_bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = gradflow.Monitor(model, optimizer=optimizer)
    model.tap = lambda t, name, act: monitor.tap(t, name, activation=act)
    rec = GradRecorder(model)
    losses = []
    model.train()
    for i in range(steps):
        x = data[i * batch:(i + 1) * batch]
        optimizer.zero_grad()
        rec.begin_step()
        recon_batch, mu, logvar = model(x)
        loss = vae_loss_function(recon_batch, x, mu, logvar)
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        optimizer.step()
        losses.append(loss.item())
    rec.remove()
    return Run("vae" + ("_dead" if dead_bias is not None else ""), model, monitor, rec, losses,
               traits={"activation": "relu"})


# ---------------------------------------------------------------------------------------------
# 9. actor_critic on a corridor.


class Corridor:
    """Positions 0..size-1; start at random in 2..size-3; action 1 moves right, 0 left. Reaching
    the right end pays +1, the left end -1; both end the episode, as does max_steps."""

    def __init__(self, size=9, max_steps=20, seed=0):
        self.size, self.max_steps = size, max_steps
        self.rng = random.Random(seed)

    def obs(self):
        o = torch.zeros(self.size)
        o[self.pos] = 1.0
        return o

    def reset(self):
        self.pos = self.rng.randint(2, self.size - 3)
        self.t = 0
        return self.obs()

    def step(self, action):
        self.pos += 1 if action == 1 else -1
        self.t += 1
        if self.pos == self.size - 1:
            return self.obs(), 1.0, True
        if self.pos == 0:
            return self.obs(), -1.0, True
        return self.obs(), -0.01, self.t >= self.max_steps


SavedAction = namedtuple("SavedAction", ["log_prob", "value"])


class Policy(nn.Module):
    """implements both actor and critic in one model"""

    def __init__(self, n_obs=9, n_hidden=32, n_actions=2):
        super().__init__()
        self.affine1 = nn.Linear(n_obs, n_hidden)
        self.action_head = nn.Linear(n_hidden, n_actions)
        self.value_head = nn.Linear(n_hidden, 1)
        self.saved_actions = []
        self.rewards = []

    def forward(self, x):
        x = F.relu(self.affine1(x))
        action_prob = F.softmax(self.action_head(x), dim=-1)
        state_values = self.value_head(x)
        return action_prob, state_values


def run_actor_critic(episodes=30, seed=0, gamma=0.99):
    set_seed(seed)
    env = Corridor(seed=seed + 1)
    model = Policy()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    eps = torch.finfo(torch.float32).eps
    monitor = gradflow.Monitor(model, optimizer=optimizer)
    rec = GradRecorder(model)
    losses, lengths = [], []

    def select_action(state):
        probs, state_value = model(state)
        m = torch.distributions.Categorical(probs)
        action = m.sample()
        model.saved_actions.append(SavedAction(m.log_prob(action), state_value))
        return action.item()

    for _ in range(episodes):
        state = env.reset()
        rec.begin_step()
        done = False
        while not done:
            action = select_action(state)
            state, reward, done = env.step(action)
            model.rewards.append(reward)
        # finish_episode
        R = 0
        saved_actions = model.saved_actions
        policy_losses, value_losses, returns = [], [], []
        for r in model.rewards[::-1]:
            R = r + gamma * R
            returns.insert(0, R)
        returns = torch.tensor(returns)
        returns = (returns - returns.mean()) / (returns.std() + eps)
        for (log_prob, value), R in zip(saved_actions, returns):
            advantage = R - value.item()
            policy_losses.append(-log_prob * advantage)
            value_losses.append(F.smooth_l1_loss(value, torch.tensor([R])))
        optimizer.zero_grad()
        loss = torch.stack(policy_losses).sum() + torch.stack(value_losses).sum()
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        optimizer.step()
        losses.append(loss.item())
        lengths.append(len(model.rewards))
        del model.rewards[:]
        del model.saved_actions[:]
    rec.remove()
    run = Run("actor_critic", model, monitor, rec, losses, traits={"activation": "relu"})
    run.lengths = lengths
    return run


# ---------------------------------------------------------------------------------------------
# 10. A GAN: two models, two optimizers, one Monitor each.


def gan_mlp(d_in, width, d_out):
    return nn.Sequential(nn.Linear(d_in, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2),
                         nn.Linear(width, d_out))


def ring_batch(n, g):
    k = torch.randint(0, 8, (n,), generator=g).float() * (2 * math.pi / 8)
    return torch.stack([torch.cos(k), torch.sin(k)], 1) * 2 + 0.05 * torch.randn(n, 2, generator=g)


def run_gan(steps=40, seed=0):
    """Returns (run_g, run_d). The discriminator's Monitor has auto_step=False and is stepped
    after optimizerD.step(): its step is errD_real + errD_fake, what optimizerD applies. Its
    reference records only those two forwards (netD on real, on fake.detach()); the generator's
    backward through netD is zeroed by netD.zero_grad() before it is ever applied."""
    set_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    netG, netD = gan_mlp(8, 64, 2), gan_mlp(2, 64, 1)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    monitor_g = gradflow.Monitor(netG, optimizer=optimizerG)
    monitor_d = gradflow.Monitor(netD, optimizer=optimizerD, auto_step=False)
    rec_g, rec_d = GradRecorder(netG), GradRecorder(netD)
    criterion = nn.BCEWithLogitsLoss()
    losses_g, losses_d = [], []
    batch = 64
    for i in range(steps):
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        rec_d.enabled = True
        rec_d.begin_step()
        output = netD(ring_batch(batch, g)).view(-1)
        errD_real = criterion(output, torch.ones_like(output))
        monitor_d.watch(errD_real)
        errD_real.backward()
        noise = torch.randn(batch, 8, generator=g)
        rec_g.begin_step()
        fake = netG(noise)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, torch.zeros_like(output))
        monitor_d.watch(errD_fake)
        errD_fake.backward()
        rec_d.snapshot_params()
        optimizerD.step()
        monitor_d.step()
        rec_d.enabled = False
        # (2) Update G: maximize log(D(G(z)))
        netG.zero_grad()
        output = netD(fake).view(-1)
        errG = criterion(output, torch.ones_like(output))
        monitor_g.watch(errG)
        errG.backward()
        rec_g.snapshot_params()
        optimizerG.step()
        losses_d.append((errD_real + errD_fake).item())
        losses_g.append(errG.item())
    rec_g.remove()
    rec_d.remove()
    traits = {"activation": "leaky_relu", "adversarial": True}
    return (Run("gan_generator", netG, monitor_g, rec_g, losses_g, traits=traits),
            Run("gan_discriminator", netD, monitor_d, rec_d, losses_d, traits=traits))


# ---------------------------------------------------------------------------------------------
# 11. The same programs as TorchScript (torch.jit.script), attached as a ScriptModule.


def run_scripted(kind, steps=30, seed=0):
    """A scripted model trained by SGD, with the reference taken from its eager twin: before each
    step the scripted model takes the eager model's weights, both run forward and backward on the
    same batch, and the eager model steps as the public program does. kind: "transformer" (the
    tutorial's post-LN model) or "lstm_lm" (word_language_model's). Dropout is 0 so that both
    twins compute alike."""
    set_seed(seed)
    ntokens, bptt, bsz = 40, 16, 8
    train_data = batchify(markov_tokens(bptt * bsz * steps + bsz, ntokens, seed + 1), bsz)
    if kind == "transformer":
        eager = TransformerLM(ntokens, d_model=32, nhead=2, d_hid=64, nlayers=2, dropout=0.0)
        mask = generate_square_subsequent_mask(bptt)
        extra, lr, clip, traits = (mask,), 5.0, 0.5, {"norm": "layer", "residual": True}
        criterion = nn.CrossEntropyLoss()
        output_of = lambda out: out.view(-1, ntokens)  # noqa: E731
    else:
        eager = RNNModel(ntokens, 32, 32, 2, dropout=0.0, tie_weights=True)
        extra, lr, clip, traits = (eager.init_hidden(bsz),), 20.0, 0.25, {"cell": "lstm", "recurrent": True}
        criterion = nn.NLLLoss()
        output_of = lambda out: out[0]  # noqa: E731
    scripted = torch.jit.script(copy.deepcopy(eager))  # its own tensors: script() would share them
    scripted.load_state_dict(eager.state_dict())
    monitor = gradflow.Monitor(scripted)
    rec = GradRecorder(eager)
    optimizer = torch.optim.SGD(eager.parameters(), lr=lr)
    losses = []
    for i in range(0, bptt * steps, bptt):
        data, targets = get_batch(train_data, i, bptt)
        with torch.no_grad():
            scripted.load_state_dict(eager.state_dict())
        rec.begin_step()
        criterion(output_of(eager(data, *extra)), targets).backward()
        rec.snapshot_params()
        loss = criterion(output_of(scripted(data, *extra)), targets)
        monitor.watch(loss)
        loss.backward()
        scripted.zero_grad(set_to_none=True)
        torch.nn.utils.clip_grad_norm_(eager.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    rec.remove()
    return Run("scripted_" + kind, scripted, monitor, rec, losses, traits={**traits, "clip_norm": clip})


# ---------------------------------------------------------------------------------------------
# 13. An MLP classifier (pytorch/examples mnist's loop with its CNN replaced by fc1 -> ReLU ->
# fc2 -> ReLU -> fc3, cross-entropy, SGD with momentum) on noisy prototypes of 10 classes, and
# what goes wrong with it in public programs: a bias that kills a layer, a fine-tuning learning
# rate that blows the loss up and kills every ReLU, one corrupt batch, a parametrized weight,
# weights used through functional calls instead of the modules.


class MLPClassifier(nn.Module):
    def __init__(self, inputs=64, hidden=128, classes=10):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def noisy_prototypes(n, seed, noise=2.5, classes=10, dim=64):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, dim, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    return protos[y] + noise * torch.randn(n, dim, generator=g), y


def pretrained_mlp(seed=0, steps=40, batch=64):
    """40 steps of SGD(0.05, momentum 0.9): the model a fine-tuning run starts from."""
    torch.manual_seed(seed)
    x, y = noisy_prototypes(batch * steps, 7)
    model = MLPClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x[i * batch:(i + 1) * batch]), y[i * batch:(i + 1) * batch]).backward()
        opt.step()
    return model


def run_mlp(steps=60, seed=0, batch=64, lr=0.05, dead_bias=None, finetune=False, corrupt_step=None,
            parametrize=False):
    """dead_bias: fc2's bias set to this before training (no activation told to gradflow);
    finetune: start from pretrained_mlp(); corrupt_step: that step's inputs scaled by 30;
    parametrize: fc1 and fc2 under parametrizations.spectral_norm."""
    model = pretrained_mlp(seed) if finetune else None
    torch.manual_seed(seed)
    if model is None:
        model = MLPClassifier()
    if dead_bias is not None:
        with torch.no_grad():
            model.fc2.bias.fill_(dead_bias)
    if parametrize:
        from torch.nn.utils.parametrizations import spectral_norm
        model.fc1 = spectral_norm(model.fc1)
        model.fc2 = spectral_norm(model.fc2)
    x, y = noisy_prototypes(batch * steps, 7)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    monitor = gradflow.Monitor(model, optimizer=optimizer)
    rec = GradRecorder(model)
    losses = []
    for i in range(steps):
        xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        if i == corrupt_step:
            xb = xb * 30.0
        optimizer.zero_grad()
        rec.begin_step()
        loss = F.cross_entropy(model(xb), yb)
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        optimizer.step()
        losses.append(loss.item())
    rec.remove()
    return Run("mlp", model, monitor, rec, losses)


def run_mlp_functional(steps=40, seed=0, batch=32, inner_lr=0.1):
    """MAML's inner loop as MAML-Pytorch and learn2learn write it: the modules hold the weights,
    but the forward computes with fast weights (one inner SGD step, create_graph=True) through
    F.linear, never calling the modules; the outer loss trains the weights through them."""
    torch.manual_seed(seed)
    model = MLPClassifier(inputs=16, hidden=32, classes=4)
    x, y = noisy_prototypes(2 * batch * steps, 3, noise=1.0, classes=4, dim=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = gradflow.Monitor(model, optimizer=optimizer)
    rec = GradRecorder(model)
    names = [n for n, _ in model.named_parameters()]

    def functional_forward(w, inputs):
        h = F.relu(F.linear(inputs, w["fc1.weight"], w["fc1.bias"]))
        h = F.relu(F.linear(h, w["fc2.weight"], w["fc2.bias"]))
        return F.linear(h, w["fc3.weight"], w["fc3.bias"])

    losses = []
    for i in range(steps):
        s = 2 * batch * i
        xs, ys = x[s:s + batch], y[s:s + batch]
        xq, yq = x[s + batch:s + 2 * batch], y[s + batch:s + 2 * batch]
        optimizer.zero_grad()
        rec.begin_step()
        weights = dict(model.named_parameters())
        inner = F.cross_entropy(functional_forward(weights, xs), ys)
        grads = torch.autograd.grad(inner, [weights[n] for n in names], create_graph=True)
        fast = {n: weights[n] - inner_lr * g for n, g in zip(names, grads)}
        loss = F.cross_entropy(functional_forward(fast, xq), yq)
        monitor.watch(loss)
        loss.backward()
        rec.snapshot_params()
        optimizer.step()
        losses.append(loss.item())
    rec.remove()
    return Run("mlp_functional", model, monitor, rec, losses)
