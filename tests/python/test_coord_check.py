"""gradflow.coord_check: the coordinate check across widths for a model factory of the user's.

(a) every recorded figure equals plain torch's, computed here from the same seed and batch;
(b) Tensor Programs V's claim on an MLP with Adam: SP's hidden layers and read-out change with width
    after one step, µP's (written here from Table 3) do not, and µP with an SP read-out is named
    width-unstable at the read-out and nowhere else;
(c) a GPT-style factory (real_models.GPT, nanoGPT's) runs in under a minute and writes its report;
(d) bad input gets a UsageError naming it.

Run: cd tests/python && PYTHONPATH=../../build/python python3 -m unittest test_coord_check -v
"""
import json
import math
import os
import tempfile
import time
import unittest

import torch

import gradflow
import real_models as rm

torch.set_num_threads(1)

QUANTITIES = ("activation", "change", "output_gradient", "weight_gradient", "update")


def mlp(width, readout_scale=1.0):
    m = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
                            torch.nn.Linear(width, 10))
    with torch.no_grad():
        m[4].weight.mul_(readout_scale)
    return m


BASE = 32


def mup_mlp(width):
    """Table 3's read-out: variance 1/fan_in² (relative to the base width: times BASE/width)."""
    return mlp(width, math.sqrt(BASE / width))


def adam(lr=1e-2):
    return lambda m: torch.optim.Adam(m.parameters(), lr=lr)


def mup_adam(lr=1e-2, sp_readout=False):
    """Table 3 under Adam: input weights and biases η, hidden and read-out weights η·BASE/width."""
    def make(m):
        r = BASE / m[2].weight.shape[0]
        return torch.optim.Adam([
            {"params": [m[0].weight, m[0].bias, m[2].bias, m[4].bias], "lr": lr},
            {"params": [m[2].weight], "lr": lr * r},
            {"params": [m[4].weight], "lr": lr if sp_readout else lr * r},
        ])
    return make


def batch(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def mean_abs(t):
    return t.detach().double().abs().mean().item()


class FiguresTest(unittest.TestCase):
    def test_every_figure_equals_plain_torch(self):
        widths, steps = [8, 16, 32], 3
        data = batch()
        r = gradflow.coord_check(mlp, widths, data, adam(), steps=steps)
        got = {(row["width"], row["step"], row["layer"], row["quantity"]): row["value"] for row in r.rows}
        self.assertEqual(len(got), len(widths) * steps * 3 * len(QUANTITIES))
        x, y = data
        checked = 0
        for w in widths:
            torch.manual_seed(0)
            m = mlp(w)
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            h0 = None
            for t in range(steps):
                opt.zero_grad(set_to_none=True)
                h = [m[0](x)]
                h.append(m[2](torch.relu(h[0])))
                h.append(m[4](torch.relu(h[1])))
                for v in h:
                    v.retain_grad()
                torch.nn.functional.cross_entropy(h[2], y).backward()
                if h0 is None:
                    h0 = [v.detach().clone() for v in h]
                before = [m[i].weight.detach().clone() for i in (0, 2, 4)]
                opt.step()
                for k, (layer, i) in enumerate(zip(("0", "2", "4"), (0, 2, 4))):
                    want = {"activation": mean_abs(h[k]), "change": mean_abs(h[k] - h0[k]) if t else math.nan,
                            "output_gradient": mean_abs(h[k].grad), "weight_gradient": mean_abs(m[i].weight.grad),
                            "update": mean_abs(m[i].weight - before[k])}
                    for q, v in want.items():
                        g = got[(w, t, layer, q)]
                        if math.isnan(v):
                            self.assertTrue(math.isnan(g), (w, t, layer, q))
                        else:
                            self.assertAlmostEqual(g / v, 1.0, delta=1e-9, msg=(w, t, layer, q, g, v))
                        checked += 1
        self.assertEqual(checked, len(got))

    def test_slopes_are_least_squares_of_the_figures(self):
        r = gradflow.coord_check(mlp, [16, 32, 64, 128], batch(), adam(), steps=2)
        for (layer, q, t), slope in r.slopes.items():
            pts = [(math.log(row["width"]), math.log(row["value"])) for row in r.rows
                   if row["layer"] == layer and row["quantity"] == q and row["step"] == t and row["value"] > 0]
            if len(pts) < 2:
                self.assertIsNone(slope)
                continue
            mx = sum(p[0] for p in pts) / len(pts)
            my = sum(p[1] for p in pts) / len(pts)
            want = sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)
            self.assertAlmostEqual(slope, want, delta=1e-9)

    def test_kinds_of_a_gpt_from_its_shapes(self):
        r = gradflow.coord_check(lambda w: rm.GPT(40, 8, n_layer=1, n_head=2, n_embd=w), [16, 32], _gpt_batch(), _adamw, steps=1)
        kinds = {v["layer"]: v["kind"] for v in r.verdicts}
        self.assertEqual(kinds["transformer.wte"], "input")      # an embedding table's rows are inputs
        self.assertEqual(kinds["transformer.wpe"], "input")
        self.assertEqual(kinds["transformer.h.0.attn.c_attn"], "hidden")
        self.assertEqual(kinds["transformer.h.0.mlp.c_proj"], "hidden")
        self.assertEqual(kinds["transformer.h.0.ln_1"], "input")  # a norm gain of width size
        self.assertEqual(kinds["lm_head"], "readout")


class Attention(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.embed = torch.nn.Linear(16, width)
        self.attn = torch.nn.MultiheadAttention(width, 2, batch_first=True)
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0]).mean(1)


class ModulesTest(unittest.TestCase):
    def test_multihead_attention_is_a_layer_and_its_out_proj_is_named_unmeasured(self):
        x, y = batch()
        r = gradflow.coord_check(Attention, [16, 32, 64], (x.view(8, 4, 16), y[:8]), adam(), steps=2)
        v = {d["layer"]: d for d in r.verdicts}
        self.assertEqual(v["attn"]["kind"], "hidden")  # its in_proj_weight, [3 width, width]
        self.assertTrue(v["attn"]["measured"])
        self.assertFalse(v["attn.out_proj"]["measured"])  # MultiheadAttention applies its weight itself
        self.assertTrue(v["attn.out_proj"]["stable"])
        self.assertEqual(r.unmeasured_layers(), ["attn.out_proj"])
        self.assertNotIn("attn.out_proj", r.unstable_layers())
        att = [row for row in r.rows if row["layer"] == "attn" and row["quantity"] == "update"]
        self.assertTrue(all(row["value"] > 0 for row in att))


class ScaledInPlace(torch.nn.Module):
    """nanoGPT-mup's pattern: the parent scales a module's output in place after it returned."""

    def __init__(self, width):
        super().__init__()
        self.body = torch.nn.Linear(16, width)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, 10)
        self.alpha = 32 / width

    def forward(self, x):
        h = self.norm(torch.relu(self.body(x)))
        h *= self.alpha
        return self.head(h)


class TiedLM(torch.nn.Module):
    def __init__(self, width, vocab=12):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, width)
        self.mix = torch.nn.Linear(width, width)
        self.lm_head = torch.nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        return self.lm_head(torch.tanh(self.mix(self.wte(idx))))


class ProgramPatternsTest(unittest.TestCase):
    def test_an_output_changed_in_place_is_measured_as_the_module_returned_it(self):
        x, y = batch()
        r = gradflow.coord_check(ScaledInPlace, [32, 64], (x, y), adam(), steps=2)
        got = {(row["width"], row["step"], row["quantity"]): row["value"] for row in r.rows if row["layer"] == "norm"}
        for w in (32, 64):
            torch.manual_seed(0)
            m = ScaledInPlace(w)
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            h0 = None
            for t in range(2):
                opt.zero_grad(set_to_none=True)
                h = m.norm(torch.relu(m.body(x)))
                h.retain_grad()
                out = m.head(h * m.alpha)  # the same function, without the in-place change
                torch.nn.functional.cross_entropy(out, y).backward()
                h0 = h.detach().clone() if h0 is None else h0
                opt.step()
                self.assertAlmostEqual(got[(w, t, "activation")] / mean_abs(h), 1.0, delta=1e-9)
                self.assertAlmostEqual(got[(w, t, "output_gradient")] / mean_abs(h.grad), 1.0, delta=1e-9)
                if t:
                    self.assertAlmostEqual(got[(w, t, "change")] / mean_abs(h - h0), 1.0, delta=1e-6)

    def test_a_tied_readout_is_named_with_the_embedding_it_shares(self):
        g = torch.Generator().manual_seed(1)
        idx = torch.randint(0, 12, (8, 6), generator=g)
        r = gradflow.coord_check(TiedLM, [32, 64, 128, 256], (idx, torch.roll(idx, -1, 1)), adam(), steps=3)
        layers = {layer["name"]: layer for layer in r.check["layers"]}
        self.assertEqual(layers["wte"]["kind"], "input")
        self.assertEqual(layers["lm_head"]["kind"], "readout")
        self.assertEqual(layers["lm_head"]["tied_to"], "wte")
        self.assertNotIn("tied_to", layers["wte"])
        self.assertIn("lm_head", r.unstable_layers())  # SP: the remedy below is read
        for f in r.findings:
            if f.where == "lm_head":
                self.assertIn("shared with wte", f.remedy)
                self.assertNotIn("initialise its weights", f.remedy)
                self.assertIn("output", f.remedy)

    def test_the_programs_random_sequence_goes_on_as_if_the_check_had_not_run(self):
        torch.manual_seed(123)
        torch.rand(3)
        want = torch.rand(5)
        torch.manual_seed(123)
        torch.rand(3)
        gradflow.coord_check(mlp, [16, 32], batch(), adam(), steps=1)
        self.assertTrue(torch.equal(torch.rand(5), want))

    def test_the_optimizer_line_shows_the_rates_at_both_ends(self):
        r = gradflow.coord_check(mup_mlp, [32, 128], batch(), mup_adam(lr=0.02), steps=1)
        self.assertEqual(r.check["optimizer"], "Adam lr 0.02 at width 32, lr 0.005 to 0.02 over 3 groups at width 128")
        self.assertEqual(gradflow.coord_check(mlp, [32, 64], batch(), adam(), steps=1).check["optimizer"], "Adam lr 0.01")


class VerdictTest(unittest.TestCase):
    WIDTHS = [32, 64, 128, 256, 512]

    def test_sp_unstable_mup_stable(self):
        sp = gradflow.coord_check(mlp, self.WIDTHS, batch(), adam(), steps=3, label="sp")
        mup = gradflow.coord_check(mup_mlp, self.WIDTHS, batch(), mup_adam(), steps=3, label="mup")
        self.assertEqual(sp.unstable_layers(), ["2", "4"])
        self.assertGreater(sp.slopes[("2", "change", 1)], 0.5)
        self.assertGreater(sp.slopes[("4", "change", 1)], 0.5)
        self.assertEqual(mup.unstable_layers(), [])
        for layer in ("0", "2", "4"):
            self.assertLess(abs(mup.slopes[(layer, "change", 1)]), 0.25)
        self.assertEqual({f.kind for f in sp.findings}, {"width_unstable"})
        self.assertEqual([f.where for f in sp.findings], ["2", "4"])
        self.assertEqual(mup.findings, [])

    def test_mup_with_an_sp_readout_is_named_at_the_readout(self):
        mixed = gradflow.coord_check(mlp, self.WIDTHS, batch(), mup_adam(sp_readout=True), steps=3, label="mixed")
        self.assertEqual(mixed.unstable_layers(), ["4"])
        [f] = mixed.findings
        self.assertEqual(f.where, "4")
        self.assertIn("(readout)", f.message)
        self.assertIn("1/fan_in²", f.remedy)
        self.assertIn("η/fan_in", f.remedy)
        # The finding's figures are the run's own.
        fig = {(row["width"], row["step"]): row["value"] for row in mixed.rows if row["layer"] == "4" and row["quantity"] == "change"}
        ev = dict(f.evidence)
        self.assertEqual(ev["smallest_width_figure"], fig[(self.WIDTHS[0], int(ev["step"]))])
        self.assertEqual(ev["largest_width_figure"], fig[(self.WIDTHS[-1], int(ev["step"]))])


def _gpt_batch(seed=0, vocab=40, block=8, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, block), generator=g)
    return x, torch.roll(x, -1, dims=1)


def _adamw(m):
    return torch.optim.AdamW(m.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)


class UserFactoryTest(unittest.TestCase):
    def test_gpt_factory_under_a_minute_with_its_report(self):
        def gpt(width):
            return rm.GPT(40, 16, n_layer=2, n_head=4, n_embd=width)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "coord")
            r = gradflow.coord_check(gpt, [32, 64, 128, 256], _gpt_batch(block=16, n=16),
                                     _adamw, loss_fn=lambda m, b: m(b[0], b[1])[1], steps=4, out=out)
            seconds = time.perf_counter() - start
            self.assertLess(seconds, 60)
            with open(os.path.join(out, "report.html")) as f:
                html = f.read()
            self.assertIn("<svg", html)
            for v in r.verdicts:
                self.assertIn(v["layer"], html)
            with open(os.path.join(out, "coord_check.json")) as f:
                saved = json.load(f)
            self.assertEqual(saved["checks"][0]["widths"], [32, 64, 128, 256])
            self.assertEqual(saved["checks"][0]["optimizer"], "AdamW lr 0.003")
            with self.assertRaises(gradflow.UsageError):
                gradflow.coord_check(gpt, [32, 64], _gpt_batch(block=16), _adamw, loss_fn=lambda m, b: m(b[0], b[1])[1], out=out)
            gradflow.coord_check(gpt, [32, 64], _gpt_batch(block=16), _adamw, loss_fn=lambda m, b: m(b[0], b[1])[1], out=out, force=True)
        print(f"\nGPT factory, widths 32..256, 4 steps: {seconds:.1f} s; unstable: {r.unstable_layers()}")


class BadInputTest(unittest.TestCase):
    def test_each_bad_input_is_named(self):
        cases = [
            (dict(widths=[64]), "at least two increasing widths"),
            (dict(widths=[64, 32]), "at least two increasing widths"),
            (dict(steps=0), "steps must be at least 1"),
            (dict(make_model=lambda w: mlp(w) if w < 64 else torch.nn.Sequential(torch.nn.Linear(16, 10))), "other weighted modules"),
            (dict(data=torch.randn(4, 16)), "data=(inputs, targets)"),
            (dict(loss_fn=lambda m, b: m(b[0])), "scalar tensor"),
        ]
        for change, says in cases:
            args = dict(make_model=mlp, widths=[32, 64], data=batch(), optimizer_factory=adam(), steps=1)
            args.update(change)
            with self.subTest(says=says):
                with self.assertRaises(gradflow.UsageError) as e:
                    gradflow.coord_check(**args)
                self.assertIn(says, str(e.exception))


if __name__ == "__main__":
    unittest.main()
