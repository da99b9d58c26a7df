"""gradflow.Monitor on real PyTorch training programs (real_models.py), checked three ways:

(a) exactness: every recorded layer output's gradient norm equals what a forward hook on that
    module's output receives (all calls of the step together; the trace's "calls" profile equals
    each call's norm, an nn.LSTM's "time" profile each time step's), and every parameter's equals
    the norm of p.grad right after backward;
(b) a healthy run draws no warning and no error;
(c) a broken variant of a program draws the finding that names what is broken.

Run: cd tests/python && PYTHONPATH=../../build/python python3 -m unittest test_real_models -v
"""
import functools
import json
import math
import os
import re
import tempfile
import unittest

import torch

import gradflow
import real_models as rm

torch.set_num_threads(1)

ACT_REL = 1e-6
PARAM_REL = 1e-9


def rel_close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


# Each program is trained once; the tests of one program share its run.
RUNS = {
    "transformer_post_ln": lambda: rm.run_transformer_lm(norm_first=False),
    "transformer_pre_ln": lambda: rm.run_transformer_lm(norm_first=True),
    "gpt": rm.run_gpt,
    "lstm_lm": rm.run_lstm_lm,
    "time_sequence": rm.run_time_sequence,
    "resnet18": lambda: rm.run_torchvision("resnet18"),
    "mobilenet_v2": lambda: rm.run_torchvision("mobilenet_v2"),
    "siamese": rm.run_siamese,
    "vae": rm.run_vae,
    "actor_critic": rm.run_actor_critic,
    "gan": rm.run_gan,
    "scripted_transformer": lambda: rm.run_scripted("transformer"),
    "scripted_lstm_lm": lambda: rm.run_scripted("lstm_lm"),
    # Broken variants.
    "lstm_lm_high_lr": lambda: rm.run_lstm_lm(lr=200.0, clip=None),
    "transformer_nan": lambda: rm.run_transformer_lm(norm_first=False, nan_at_step=NAN_STEP),
    "gpt_zeroed_grads": lambda: rm.run_gpt(zero_grads=True),
    "vae_dead_relu": lambda: rm.run_vae(dead_bias=-10.0),
    "siamese_deep_sigmoid": lambda: rm.run_siamese(deep_sigmoid=True),
    "mlp": rm.run_mlp,
    "mlp_dead_bias": lambda: rm.run_mlp(dead_bias=-20.0),
    "mlp_finetune_diverged": lambda: rm.run_mlp(steps=150, lr=1.0, finetune=True),
    "mlp_finetune_spike": lambda: rm.run_mlp(steps=150, lr=0.02, finetune=True, corrupt_step=20),
    "mlp_spectral_norm": lambda: rm.run_mlp(parametrize=True),
    "mlp_functional": rm.run_mlp_functional,
}
NAN_STEP = 8


@functools.lru_cache(maxsize=None)
def run(name):
    return RUNS[name]()


@functools.lru_cache(maxsize=None)
def findings_of(r):
    with tempfile.TemporaryDirectory() as d:
        return tuple(gradflow.save_report(r.monitor, os.path.join(d, "report"), label=r.name, traits=r.traits))


@functools.lru_cache(maxsize=None)
def report_of(r):
    """run.json and report.md of save_report."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "report")
        gradflow.save_report(r.monitor, out, label=r.name, traits=r.traits)
        with open(os.path.join(out, "run.json")) as f:
            run_json = json.load(f)
        with open(os.path.join(out, "report.md")) as f:
            return run_json, f.read()


@functools.lru_cache(maxsize=None)
def trace_json(r):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        r.monitor.save_json(path)
        with open(path) as f:
            return json.load(f)


def describe(findings):
    if not findings:
        return "  (no findings)"
    return "\n".join(f"  [{f.severity}] {f.kind} @ {f.where}: {f.message}" for f in findings)


def call_norms(calls):
    """A module's calls in a step: the norm of each (0 for a call whose output got no
    gradient), and the norm of all of them together."""
    each = [math.sqrt(c["sq"]) if c["sq"] is not None else 0.0 for c in calls]
    return each, math.sqrt(sum(c["sq"] for c in calls if c["sq"] is not None))


class RealModelCase(unittest.TestCase):
    maxDiff = None

    # (a) --------------------------------------------------------------------------------------
    def assert_exact(self, r):
        rec = r.recorder
        trace = trace_json(r)
        names = [s["name"] for s in trace["series"]]
        kinds = [s["kind"] for s in trace["series"]]
        # Partial steps (still open when the trace was read: the discriminator's after the
        # generator's backward ran through it) are not recorded steps; save_report leaves them out.
        steps = [s for s in trace["steps"] if not s.get("partial", False)]
        self.assertEqual(len(steps), len(rec.steps),
                         f"{r.name}: {len(steps)} complete steps in the trace, {len(rec.steps)} in the program")
        problems = []
        checked = {"activation": 0, "parameter": 0, "calls": 0, "time": 0}
        frame = r.monitor.trace_frame()
        frame_norms = {}
        for step, name, kind, grad, norm in zip(frame["step"], frame["name"], frame["kind"], frame["gradient"],
                                                frame["grad_norm"]):
            if kind in ("activation", "parameter") and grad in ("produced", ""):
                frame_norms[(int(step), str(name))] = float(norm)
        for i, (st, expected_calls, expected_params) in enumerate(zip(steps, rec.steps, rec.params)):
            s = st["step"]
            records = {names[rec_["series"]]: rec_ for rec_ in st["records"]}
            # Layer outputs: the modules whose outputs received a gradient in this step; a fused
            # recurrent module's output is its last layer's series, its other layers' series are
            # checked against an unfused replica in test_monitor.
            want_act = {r.layers_of.get(n, [n])[-1]: calls for n, calls in expected_calls.items()
                        if any(c["sq"] is not None for c in calls)}
            lower_layers = {n for layers in r.layers_of.values() for n in layers[:-1]}
            got_act = {n for n, rc in records.items() if kinds[names.index(n)] == "activation"} - lower_layers
            if not lower_layers <= set(records):
                problems.append(f"step {s}: no series for the lower layers {sorted(lower_layers - set(records))}")
            if set(want_act) != got_act:
                problems.append(f"step {s}: layer outputs recorded {sorted(got_act ^ set(want_act))} differ: "
                                f"missing {sorted(set(want_act) - got_act)}, extra {sorted(got_act - set(want_act))}")
            for n, calls in want_act.items():
                if n not in records:
                    continue
                each, total = call_norms(calls)
                got = records[n]["norm"]
                checked["activation"] += 1
                if got is None or not rel_close(got, total, ACT_REL):
                    problems.append(f"step {s}: activation {n}: recorded {got!r}, hook {total!r} ({len(calls)} call(s))")
                fr = frame_norms.get((s, n))
                if fr is None or not rel_close(fr, total, ACT_REL):
                    problems.append(f"step {s}: activation {n}: trace_frame {fr!r}, hook {total!r}")
                if len(calls) > 1:
                    checked["calls"] += 1
                    got_calls = records[n].get("calls")
                    if got_calls is None or len(got_calls) != len(each) or not all(
                            g is not None and rel_close(g, e, ACT_REL) for g, e in zip(got_calls, each)):
                        problems.append(f"step {s}: activation {n}: calls {got_calls!r}, hook per call {each!r}")
                elif calls[0]["time"] is not None:
                    checked["time"] += 1
                    want_t = [math.sqrt(x) for x in calls[0]["time"]]
                    got_t = records[n].get("time")
                    if got_t is None or len(got_t) != len(want_t) or not all(
                            g is not None and rel_close(g, e, ACT_REL) for g, e in zip(got_t, want_t)):
                        problems.append(f"step {s}: activation {n}: time {got_t!r}, hook per time step {want_t!r}")
            # Parameters: the gradient produced, p.grad right after backward.
            got_par = {n for n, rc in records.items() if kinds[names.index(n)] == "parameter"}
            if set(expected_params) != got_par:
                problems.append(f"step {s}: parameters recorded differ: missing {sorted(set(expected_params) - got_par)}, "
                                f"extra {sorted(got_par - set(expected_params))}")
            for n, want in expected_params.items():
                fr = frame_norms.get((s, n))
                checked["parameter"] += 1
                if fr is None or not rel_close(fr, want, PARAM_REL):
                    problems.append(f"step {s}: parameter {n}: recorded {fr!r}, p.grad {want!r}")
        self.assertGreater(checked["activation"], 0)
        self.assertGreater(checked["parameter"], 0)
        if problems:
            self.fail(f"{r.name}: {len(problems)} mismatch(es) over {checked} checked; the first ones:\n"
                      + "\n".join(problems[:20]))
        return checked

    # (b) --------------------------------------------------------------------------------------
    def assert_healthy(self, r):
        findings = findings_of(r)
        bad = [f for f in findings if f.severity in ("warning", "error")]
        self.assertEqual(bad, [], f"{r.name} trained healthily (loss {r.losses[0]:.4g} -> {r.losses[-1]:.4g}) "
                                  f"but the report says:\n{describe(findings)}")

    # (c) --------------------------------------------------------------------------------------
    def assert_finding(self, r, kinds, where_has=None, severities=("warning", "error")):
        findings = findings_of(r)
        hits = [f for f in findings if f.kind in kinds and f.severity in severities]
        self.assertTrue(hits, f"{r.name}: expected one of {kinds}, got:\n{describe(findings)}")
        if where_has is not None:
            self.assertTrue(any(all(w in f.where for w in where_has) for f in hits),
                            f"{r.name}: expected {kinds} at {where_has}, got:\n{describe(findings)}")
        return hits


class TransformerPostLN(RealModelCase):
    def test_exact(self):
        self.assert_exact(run("transformer_post_ln"))

    def test_healthy(self):
        r = run("transformer_post_ln")
        self.assertLess(r.losses[-1], 0.7 * r.losses[0])
        self.assert_healthy(r)

    def test_nan_at_a_known_step_is_non_finite_there(self):
        r = run("transformer_nan")
        self.assertTrue(all(math.isfinite(x) for x in r.losses[:NAN_STEP]))
        self.assertFalse(math.isfinite(r.losses[NAN_STEP]))
        hits = self.assert_finding(r, {"non_finite"}, severities=("error",))
        # where names the step the NaN entered (and the layer backward met it in first: the decoder).
        self.assertTrue(any(re.search(rf"\bstep {NAN_STEP}\b", f.where) for f in hits), describe(hits))
        self.assertTrue(any("decoder" in f.where for f in hits), describe(hits))


class TransformerPreLN(RealModelCase):
    def test_the_layernorm_placement_is_read_from_the_layers_and_reaches_the_report(self):
        for norm_first, placement in ((False, "post"), (True, "pre")):
            layer = torch.nn.TransformerEncoderLayer(16, 2, 32, norm_first=norm_first, batch_first=True)
            model = torch.nn.TransformerEncoder(layer, 2)
            monitor = gradflow.Monitor(model)
            loss = model(torch.randn(4, 5, 16)).pow(2).mean()
            monitor.watch(loss)
            loss.backward()
            monitor.step()
            with tempfile.TemporaryDirectory() as d:
                gradflow.save_report(monitor, os.path.join(d, "r"))
                with open(os.path.join(d, "r", "run.json")) as f:
                    traits = json.load(f)["traits"]
            self.assertEqual(traits["norm_placement"], placement)
            self.assertTrue(traits["residual"])
            self.assertEqual(traits["norm"], "layer")
            monitor.detach()


    def test_exact(self):
        self.assert_exact(run("transformer_pre_ln"))

    def test_healthy(self):
        r = run("transformer_pre_ln")
        self.assertLess(r.losses[-1], 0.8 * r.losses[0])
        self.assert_healthy(r)


class GPTBlocks(RealModelCase):
    def test_exact(self):
        self.assert_exact(run("gpt"))

    def test_healthy(self):
        r = run("gpt")
        self.assertLess(r.losses[-1], 0.8 * r.losses[0])
        self.assert_healthy(r)

    def test_gradients_zeroed_by_hooks_are_no_gradient(self):
        r = run("gpt_zeroed_grads")
        self.assert_finding(r, {"no_gradient"}, severities=("error",))


class LSTMWordLM(RealModelCase):
    def test_exact(self):
        checked = self.assert_exact(run("lstm_lm"))
        self.assertGreater(checked["time"], 0, "the fused LSTM's time profile was checked")

    def test_healthy(self):
        r = run("lstm_lm")
        self.assertLess(sum(r.losses[-3:]), sum(r.losses[:3]))
        self.assert_healthy(r)

    def test_high_learning_rate_without_clipping_diverges(self):
        r = run("lstm_lm_high_lr")
        self.assert_finding(r, {"exploding", "non_finite", "unstable_loss"}, severities=("error",))


class LSTMCellSequence(RealModelCase):
    def test_exact(self):
        r = run("time_sequence")
        checked = self.assert_exact(r)
        self.assertGreater(checked["calls"], 0, "the cells' per-call profile was checked")
        # One record per evaluation of LBFGS's closure, numbered within its optimizer step.
        f = r.monitor.trace_frame()
        self.assertEqual(len(set(int(s) for s in f["step"])), len(r.losses))
        self.assertEqual(sorted(set(int(o) for o in f["optimizer_step"])), [0, 1, 2])

    def test_healthy(self):
        r = run("time_sequence")
        self.assertLess(r.losses[-1], 0.1 * r.losses[0])
        self.assert_healthy(r)


class ResNet18(RealModelCase):
    def test_exact(self):
        self.assert_exact(run("resnet18"))

    def test_healthy(self):
        r = run("resnet18")
        self.assertLess(sum(r.losses[-3:]), sum(r.losses[:3]))
        self.assert_healthy(r)


class MobileNetV2(RealModelCase):
    def test_exact(self):
        self.assert_exact(run("mobilenet_v2"))

    def test_healthy(self):
        r = run("mobilenet_v2")
        self.assertLess(sum(r.losses[-3:]), sum(r.losses[:3]))
        self.assert_healthy(r)


class Siamese(RealModelCase):
    def test_exact(self):
        checked = self.assert_exact(run("siamese"))
        self.assertGreater(checked["calls"], 0, "the shared encoder's two calls were checked")

    def test_healthy(self):
        r = run("siamese")
        self.assertLess(r.losses[-1], 0.5 * r.losses[0])
        self.assert_healthy(r)

    def test_deep_sigmoid_encoder_vanishes(self):
        r = run("siamese_deep_sigmoid")
        hits = self.assert_finding(r, {"vanishing"})
        # Named from the first sigmoid layer (fc.0) to the last hidden one.
        self.assertTrue(any("fc.0" in f.where for f in hits), describe(hits))


class VariationalAutoencoder(RealModelCase):
    def test_exact(self):
        self.assert_exact(run("vae"))

    def test_healthy(self):
        r = run("vae")
        self.assertLess(r.losses[-1], 0.98 * r.losses[0])
        self.assert_healthy(r)

    def test_dead_relus_are_dead_units(self):
        r = run("vae_dead_relu")
        h1 = r.model.fc1(torch.rand(8, 64)).relu()
        self.assertEqual(int((h1 > 0).sum()), 0, "every unit of h.1 is inactive")
        self.assert_finding(r, {"dead_units", "no_gradient"}, where_has=["h.1"], severities=("error",))


class ActorCritic(RealModelCase):
    def test_exact(self):
        r = run("actor_critic")
        checked = self.assert_exact(r)
        self.assertGreater(checked["calls"], 0)
        self.assertGreater(len(set(r.lengths)), 3, f"episodes of varying length: {r.lengths}")
        # The policy is called once per environment step: the calls profile has one entry per step.
        trace = trace_json(r)
        names = [s["name"] for s in trace["series"]]
        for st, length in zip(trace["steps"], r.lengths):
            for record in st["records"]:
                if names[record["series"]] == "affine1" and length > 1:
                    self.assertEqual(len(record.get("calls", [])), length, (st["step"], length))

    def test_healthy(self):
        r = run("actor_critic")
        self.assert_healthy(r)


class GAN(RealModelCase):
    def test_exact_generator(self):
        self.assert_exact(run("gan")[0])

    def test_exact_discriminator(self):
        checked = self.assert_exact(run("gan")[1])
        self.assertGreater(checked["calls"], 0, "netD on real and on fake: two calls a step")

    def test_healthy_generator(self):
        self.assert_healthy(run("gan")[0])

    def test_healthy_discriminator(self):
        self.assert_healthy(run("gan")[1])




# A TorchScript module has no forward hooks: the C++ Monitor names what each submodule's call
# returned, and the eager twin's forward hooks are the reference.
class ScriptedTransformer(RealModelCase):
    def test_exact(self):
        self.assert_exact(run("scripted_transformer"))

    def test_healthy(self):
        r = run("scripted_transformer")
        self.assertLess(r.losses[-1], 0.5 * r.losses[0])
        self.assert_healthy(r)


class ScriptedLSTMWordLM(RealModelCase):
    def test_exact(self):
        checked = self.assert_exact(run("scripted_lstm_lm"))
        self.assertGreater(checked["time"], 0)

    def test_healthy(self):
        r = run("scripted_lstm_lm")
        self.assertLess(r.losses[-1], r.losses[0])
        self.assert_healthy(r)


def zero_steps(r, layer):
    """The steps at which every parameter of `layer` had p.grad exactly 0 (the program's truth)."""
    return [i for i, params in enumerate(r.recorder.params)
            if all(v == 0.0 for n, v in params.items() if n.startswith(layer + "."))]


def longest_run(steps):
    """The first and last step of the longest stretch of consecutive steps in a sorted list."""
    best, start = (steps[0], steps[0]), steps[0]
    for prev, cur in zip(steps, steps[1:]):
        if cur != prev + 1:
            start = cur
        if cur - start > best[1] - best[0]:
            best = (start, cur)
    return best


class MLPClassifierRuns(RealModelCase):
    def test_exact(self):
        self.assert_exact(run("mlp"))

    def test_healthy(self):
        r = run("mlp")
        self.assertLess(r.losses[-1], 0.5 * r.losses[0])
        self.assert_healthy(r)

    def test_a_bias_that_kills_a_layer_is_named_without_an_activation_told(self):
        r = run("mlp_dead_bias")
        # The truth: fc1 and fc2 receive exactly 0 at every step, fc3's bias does not.
        self.assertEqual(zero_steps(r, "fc2"), list(range(len(r.losses))))
        self.assertEqual(zero_steps(r, "fc1"), list(range(len(r.losses))))
        self.assertTrue(all(p["fc3.bias"] > 0 for p in r.recorder.params))
        hits = self.assert_finding(r, {"dead_layer"}, where_has=["fc1 .. fc2"], severities=("error",))
        self.assertIn("the network died", hits[0].message)
        self.assertIn("fc2.bias has RMS 20", hits[0].remedy)
        self.assertNotIn("no_gradient", [f.kind for f in findings_of(r)])

    def test_an_early_divergence_that_never_comes_back_is_diverged(self):
        r = run("mlp_finetune_diverged")
        self.assertGreater(max(r.losses), 100 * r.losses[0])
        self.assertGreater(sum(r.losses[-15:]) / 15, 3 * r.losses[0])
        findings = findings_of(r)
        hits = self.assert_finding(r, {"unstable_loss"}, severities=("error",))
        self.assertIn("diverged", hits[0].message)
        self.assertFalse(any("recovered" in f.message for f in findings), describe(findings))
        # Every ReLU died during the blow-up: the run's own p.grad says at which steps; the
        # finding names the longest stretch of them.
        dead = zero_steps(r, "fc2")
        self.assertGreater(len(dead), 100)
        first, last = longest_run(dead)
        died = self.assert_finding(r, {"dead_layer"}, severities=("error",))
        self.assertIn("the network died", died[0].message)
        self.assertIn(f"from {first} to {last} ({last - first + 1} steps)", died[0].message)
        self.assertIn(f"fc2 received gradient until step {first - 1}", died[0].remedy)
        self.assertIn("then a training update", died[0].remedy)

    def test_a_spike_the_run_came_back_from_is_recovered(self):
        r = run("mlp_finetune_spike")
        self.assertGreater(max(r.losses), 10 * r.losses[0])
        findings = findings_of(r)
        hits = self.assert_finding(r, {"unstable_loss"}, severities=("warning",))
        self.assertIn("at step 20 and recovered", hits[0].message)
        self.assertEqual([f for f in findings if f.severity == "error"], [], describe(findings))

    def test_a_computed_weight_is_part_of_its_module(self):
        r = run("mlp_spectral_norm")
        self.assert_healthy(r)
        trace = trace_json(r)
        layer_outputs = [s["name"] for s in trace["series"] if s["kind"] == "activation"]
        self.assertEqual(layer_outputs, ["fc1", "fc2", "fc3"])
        run_json, _ = report_of(r)
        self.assertEqual([l["name"] for l in run_json["layers"]], ["fc1", "fc2", "fc3"])
        # The weight's gradient stays in the parameter tables, equal to p.grad of its original.
        frame = r.monitor.trace_frame()
        last = max(int(s) for s in frame["step"])
        got = {str(n): float(v) for s, n, v, g in zip(frame["step"], frame["name"], frame["grad_norm"], frame["gradient"])
               if int(s) == last and g == "produced"}
        want = r.recorder.params[last]
        self.assertIn("fc1.parametrizations.weight.original", want)
        for name, norm in want.items():
            self.assertTrue(rel_close(got[name], norm, PARAM_REL), (name, got.get(name), norm))

    def test_modules_bypassed_by_functional_calls_are_listed(self):
        r = run("mlp_functional")
        self.assertLess(sum(r.losses[-5:]), sum(r.losses[:5]))
        self.assert_healthy(r)
        run_json, report = report_of(r)
        self.assertIn("No layer-output series for fc1, fc2, fc3: the module was not called in any recorded forward",
                      report)
        self.assertIn("functional calls", report)
        # Every parameter still recorded, equal to p.grad.
        frame = r.monitor.trace_frame()
        for step, params in enumerate(r.recorder.params):
            for name, norm in params.items():
                got = [float(v) for s, n, v, g in zip(frame["step"], frame["name"], frame["grad_norm"], frame["gradient"])
                       if int(s) == step and n == name and g == "produced"]
                self.assertEqual(len(got), 1, (step, name))
                self.assertTrue(rel_close(got[0], norm, PARAM_REL), (step, name, got[0], norm))


if __name__ == "__main__":
    unittest.main()
