"""The world's audit: the Bayes readout against brute force, the measurements against known
answers, and the promise itself: one utterance reveals every shared attribute."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import replace

import numpy as np
import pytest

from voice2face.synth.audio import render_utterance
from voice2face.synth.audit import (MAX_SHIFT, LinearProbe, audit_measurements, make_templates,
                                    measure, pitch_track, r_squared, spectral_shift,
                                    tremor_depth)
from voice2face.synth.ceiling import match_accuracy
from voice2face.synth.world import preset, sample_identities

# A small world with the default's utterance lengths: 240 identities, 2 utterances each.
SMALL = preset("tiny", identities=240, utterances=2, known=0, seconds=(2.0, 4.0),
               ceiling_trials=5000)
# What one utterance must reveal (R² of the oracle's estimate of o on unseen identities).
# The default world's audit gives about 0.996 / 0.90 / 0.93 (docs/performance.md); the small
# world fits on ~230 utterances instead of ~2,800, hence the margin.
R2_BOUNDS = {"gender": 0.95, "age": 0.6, "size": 0.7}


def test_match_accuracy_is_the_pairwise_bayes_rule():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(9, 3))
    genders = np.array(list("mmmmfffff"))
    sigma = np.array([0.6, 0.9, 1.2])
    speaker = np.repeat(np.arange(9), 2)
    o_hat = shared[speaker] + sigma * rng.normal(size=(18, 3))
    got = match_accuracy(o_hat, speaker, shared, genders, sigma)
    every, same = [], []
    for o, i in zip(o_hat, speaker):           # the slow obvious way
        d = lambda j: sum(((o[k] - shared[j][k]) / sigma[k]) ** 2 for k in range(3))
        right = [float(d(i) < d(j)) for j in range(9) if j != i]
        every.append(np.mean(right))
        same.append(np.mean([float(d(i) < d(j)) for j in range(9)
                             if j != i and genders[j] == genders[i]]))
    assert got["match_1to2"] == pytest.approx(np.mean(every))
    assert got["match_1to2_gender"] == pytest.approx(np.mean(same))


def test_linear_probe_is_least_squares():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)) * [1, 10, 0.1, 3, 1] + 4
    y = x @ rng.normal(size=(5, 2)) + 0.01 * rng.normal(size=(200, 2)) + 7
    probe = LinearProbe(ridge=0.0, clip=np.inf).fit(x, y)
    design = np.c_[x, np.ones(len(x))]
    reference = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert np.allclose(probe.predict(x), reference, atol=1e-8)
    assert np.all(r_squared(probe.predict(x), y) > 0.999)


def test_measurements_recover_known_pitch_tract_and_tremor():
    config = replace(SMALL, seconds=(3.0, 3.0))
    ident = sample_identities(config)[3]
    clean = lambda who, u=0: render_utterance(who, u, config, clean=True)
    f0, voiced, _, _ = pitch_track(clean(ident))
    # intonation moves around the speaker's pitch, not away from it
    assert abs(np.log(f0[voiced]).mean() - np.log(ident.voice.f0)) < 0.03
    # a tract 5 % longer puts the envelope 5 % lower: a shift of -5 grid steps
    base = measure(clean(ident))["envelope"]
    for factor in (0.95, 1.05):
        longer = replace(ident, voice=replace(ident.voice, vtl=ident.voice.vtl * factor))
        shift = spectral_shift(measure(clean(longer))["envelope"], base)
        assert shift == pytest.approx(-100 * np.log(factor), abs=0.8)
    # tremor: a stronger one measures stronger, by about its ratio
    depths = []
    for tremor in (0.02, 0.06):
        who = replace(ident, voice=replace(ident.voice, tremor=tremor))
        f0, voiced, _, _ = pitch_track(clean(who))
        from voice2face.synth.audit import _runs
        depths.append(tremor_depth(np.log(f0), _runs(voiced, 8))[0])
    assert 0.7 < depths[1] - depths[0] < 1.5          # log(3) = 1.1


def test_a_tract_measures_the_same_shift_in_either_pitch_register():
    """Each register has its own template and their offset is added back, so the shift is
    one scale: the same tract spoken an octave-ish higher or lower (other template) gives
    the same shift."""
    config = replace(SMALL, seconds=(3.0, 3.0))
    people = sample_identities(config)[:40]
    clean = lambda who: measure(render_utterance(who, 0, config, clean=True))
    templates = make_templates([clean(p) for p in people])
    assert 130 < np.exp(templates.threshold) < 190 and 10 < templates.offset < 25
    crossed = 0
    for who in people[:12]:
        factor = 1.8 if who.gender == "m" else 1 / 1.8
        moved = replace(who, voice=replace(who.voice, f0=who.voice.f0 * factor))
        a, b = clean(who), clean(moved)
        high = [m["pitch"][0] >= templates.threshold for m in (a, b)]
        # only pairs that cross the registers, within the search range of both templates (a
        # woman's tract at a man's pitch can lie beyond the low template's +-35 %)
        raw = [templates.shift(m) - (templates.offset if h else 0) for m, h in zip((a, b), high)]
        if high[0] == high[1] or max(map(abs, raw)) > MAX_SHIFT - 1:
            continue
        crossed += 1
        assert templates.shift(a) == pytest.approx(templates.shift(b), abs=1.5)
    assert crossed >= 4
    # a woman's tract made 20 % shorter measures 22 % higher, where one template for everyone
    # (at +-35 %) would have run out of range
    woman = next(p for p in people
                 if p.gender == "f" and templates.shift(clean(p)) > templates.offset + 3)
    shorter = replace(woman, voice=replace(woman.voice, vtl=woman.voice.vtl / 1.25))
    assert (templates.shift(clean(shorter)) - templates.shift(clean(woman))
            == pytest.approx(100 * np.log(1.25), abs=1.5))


def _measure_utterance(job):
    ident, number = job
    return measure(render_utterance(ident, number, SMALL))


def test_one_utterance_reveals_every_shared_attribute():
    """The ceiling's promise, kept by the audio: an explicit estimator fitted on training
    utterances recovers o of unseen speakers from one utterance each."""
    identities = sample_identities(SMALL)
    fit = [(i, u) for i in identities if i.split == "train" for u in range(SMALL.utterances)]
    held = [(i, u) for i in identities if i.split != "train" for u in range(SMALL.utterances)]
    with mp.get_context("fork").Pool(2) as pool:
        measured = pool.map(_measure_utterance, fit + held, chunksize=8)
    result = audit_measurements(measured[:len(fit)], [i.index for i, _ in fit],
                                measured[len(fit):], [i.index for i, _ in held], identities,
                                SMALL)
    for attribute, bound in R2_BOUNDS.items():
        assert result["r2"][attribute] > bound, result["r2"]
    # and the Bayes rule with the estimates is close to the rule with the true o
    assert result["match_1to2"] > result["true_o"]["match_1to2"] - 0.04, result
