"""Audit of a synthetic world: what does one utterance reveal of its speaker?

The Bayes ceiling (``ceiling.py``) assumes that a voice reveals the identity's observed
shared vector ``o`` exactly. This module checks that promise from the audio alone: explicit
signal-processing measurements of single utterances (a pitch tracker, a vocal-tract-length
estimate from the long-term spectrum, pitch perturbation measures), mapped to ``o`` by a
ridge regression on them and on the products of pairs of them, fitted on training
utterances, then plugged into the world's own Bayes
decision rule on the test split. It is a measurement of the world, never a training signal.

The same readout measures any voice embedding (``probe_embeddings``): a linear probe from
the embedding to ``o``, then the same decision rule. That is the 1:2 accuracy a method
reading this embedding can attain if it uses it linearly.

The measurements, per utterance (``voice_features``):

* pitch: an autocorrelation tracker on 40 ms frames every 10 ms, with parabolic
  interpolation of the lag; median, mean and the 10th/90th percentiles of log f0 over
  voiced frames (``torchaudio.functional.detect_pitch_frequency`` gives the same median
  to a few per cent, but its whole-sample lags are too coarse for the perturbation
  measures below);
* perturbation: within voiced runs, the spread of the frame-to-frame change of log f0
  (jitter-like) and of log f0 around its 150 ms moving average (tremor-like), and the spread
  of the frame-to-frame change of log level within voiced runs (shimmer-like);
* vocal-tract length: the shift along log frequency that best aligns the utterance's
  smoothed long-term average spectrum of voiced frames with a template of its pitch
  register (formants of a tube scale as 1 / length, so the whole envelope shifts;
  ``Templates``), plus the spectrum itself in 40 log-spaced bands for the regression.
"""

from __future__ import annotations

import io
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import fft as sfft
from scipy.ndimage import uniform_filter1d

from voice2face.constants import SAMPLE_RATE

from .ceiling import match_accuracy, world_ceilings

FRAME, HOP, NFFT = 640, 160, 2048          # 40 ms frames every 10 ms, at 16 kHz
F0_RANGE = (60.0, 420.0)
BAND_EDGES = np.geomspace(250.0, 7000.0, 41)
GRID = np.exp(np.arange(np.log(300.0), np.log(7900.0), 0.01))   # 1 % steps, for the shift
SUBTRACT = 1.0
CLEAR_PERCENTILE = 0
LIFTER = 32                                                      # 2 ms at 16 kHz
MAX_SHIFT = 35                                                   # grid steps: +-35 %
ATTRIBUTES = ("gender", "age", "size")
ORACLE_RIDGE = 1e-3         # the oracle's ~100 features on thousands of utterances; the
                            # embedding probes keep ``readout``'s 1e-2


def _frames(x: np.ndarray) -> np.ndarray:
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    return np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP]


def pitch_track(x: np.ndarray, sr: int = SAMPLE_RATE):
    """Per 10 ms frame: f0 (Hz), voiced mask, the frames' power spectra ``[T, NFFT/2+1]``
    and their periodicity (the normalised autocorrelation at the period).

    Normalised autocorrelation of Hann-windowed 40 ms frames. The peak is searched on the
    autocorrelation as it is (it decays with lag, which keeps the tracker off sub-octaves),
    then refined by a parabola through the bias-corrected values around it.
    """
    window = np.hanning(FRAME).astype(np.float32)
    frames = _frames(x.astype(np.float32)) * window
    spectra = sfft.rfft(frames, NFFT, axis=1)
    power = spectra.real ** 2 + spectra.imag ** 2
    ac = sfft.irfft(power, NFFT, axis=1)[:, :FRAME]
    energy = ac[:, 0] + 1e-12
    ac = ac / energy[:, None]
    lo, hi = int(sr / F0_RANGE[1]), int(sr / F0_RANGE[0])
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    peak = ac[np.arange(len(ac)), lag]
    # the window's own autocorrelation: dividing by it unbiases the peak's neighbourhood
    wac = np.correlate(window, window, "full")[FRAME - 1:]
    wac = wac / wac[0]
    rows = np.arange(len(ac))
    a, b, c = (ac[rows, lag + d] / wac[lag + d] for d in (-1, 0, 1))
    denom = a - 2 * b + c
    offset = np.where(np.abs(denom) > 1e-9, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0)
    f0 = sr / (lag + np.clip(offset, -0.5, 0.5))
    loud = energy > 0.1 * np.median(energy[energy > np.percentile(energy, 50)])
    voiced = (peak > 0.45) & loud
    if voiced.sum() > 5:       # octave slips: frames far from the utterance's median
        med = np.median(np.log(f0[voiced]))
        voiced &= np.abs(np.log(f0) - med) < 0.35
    return f0, voiced, power, peak


def _runs(mask: np.ndarray, min_len: int) -> list[slice]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [slice(s, e) for s, e in zip(edges[::2], edges[1::2]) if e - s >= min_len]


def tremor_depth(logf: np.ndarray, runs: list[slice]) -> tuple[float, float]:
    """Amplitude (in log f0) and rate (Hz) of the strongest 3.5-8 Hz modulation of the
    pitch, by a matched sinusoid over every voiced run at once: a tremor keeps its phase
    through the pauses, while the residual intonation does not add up coherently."""
    parts = [(np.arange(r.start, r.stop), logf[r] - uniform_filter1d(logf[r], 25, mode="nearest"))
             for r in runs if r.stop - r.start >= 15]
    if not parts:
        return -6.0, 0.0
    t = np.concatenate([p[0] for p in parts]) * (HOP / SAMPLE_RATE)
    x = np.concatenate([p[1] for p in parts])
    rates = np.arange(3.5, 8.01, 0.05)
    amplitude = 2 * np.abs(np.exp(-2j * np.pi * rates[:, None] * t[None]) @ x) / len(x)
    k = int(np.argmax(amplitude))
    return float(np.log(max(amplitude[k], 0.005))), float(rates[k])   # floor: the tracker's noise


def _log_spread(parts: list[np.ndarray]) -> float:
    values = np.concatenate(parts) if parts else np.zeros(1)
    return float(np.log(np.sqrt(np.mean(values ** 2)) + 1e-5))


@dataclass
class _Bands:
    """Which FFT bins fall in each band, and the interpolation onto the shift grid."""
    masks: np.ndarray
    freqs: np.ndarray


def _bands(sr: int) -> _Bands:
    freqs = np.fft.rfftfreq(NFFT, 1 / sr)
    masks = np.stack([(freqs >= lo) & (freqs < hi) for lo, hi in zip(BAND_EDGES, BAND_EDGES[1:])])
    return _Bands(masks.astype(np.float32) / masks.sum(1, keepdims=True), freqs)


def _envelope(log_envelope: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """The log envelope on the 1 % grid, with its straight-line trend removed (channel
    tilt)."""
    env = np.interp(GRID, freqs, log_envelope)
    u = np.arange(len(env))
    return env - np.polyval(np.polyfit(u, env, 2), u)


def _alignment(envelope: np.ndarray, template: np.ndarray, shifts) -> np.ndarray:
    core = slice(MAX_SHIFT, len(template) - MAX_SHIFT)
    t = template[core] - template[core].mean()
    scores = []
    for s in shifts:
        e = envelope[MAX_SHIFT + s: len(envelope) - MAX_SHIFT + s]
        scores.append(np.dot(e - e.mean(), t) / (np.linalg.norm(e - e.mean()) + 1e-9))
    return np.array(scores)


def spectral_shift(envelope: np.ndarray, template: np.ndarray) -> float:
    """Shift (grid steps of 1 % in frequency) that best aligns ``envelope`` with
    ``template``: positive when the utterance's formants sit higher (a shorter tract).

    The envelopes are compared by their slopes, which no level or channel tilt changes."""
    shifts = np.arange(-MAX_SHIFT, MAX_SHIFT + 1)
    scores = _alignment(np.gradient(envelope), np.gradient(template), shifts)
    k = int(np.argmax(scores))
    step = 0.0
    if 0 < k < len(scores) - 1:
        a, b, c = scores[k - 1: k + 2]
        step = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
    return float(shifts[k] + step)


def measure(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict:
    """The explicit measurements of one utterance, before the template shift (which needs
    the population's template): pitch statistics, perturbation, band levels, envelope."""
    f0, voiced, power, periodicity = pitch_track(x, sr)
    if voiced.sum() < 3:            # a silent or unvoiced clip: fall back to all frames
        voiced = np.ones_like(voiced)
    logf = np.log(f0)
    runs = _runs(voiced, 8)
    level = np.log(power.sum(1) + 1e-12)
    jitter = [np.diff(logf[r]) for r in runs]
    tremor = [uniform_filter1d(logf[r], 3, mode="nearest")
              - uniform_filter1d(logf[r], 15, mode="nearest") for r in runs]
    shimmer = [np.diff(level[r]) for r in runs]
    ltas = power[voiced].mean(0)
    bands = _bands(sr)
    # the spectral envelope of every voiced frame without its harmonics (cepstral
    # smoothing: quefrencies under 2 ms, shorter than any pitch period), averaged
    # with the background's spectrum (the quietest fifth of the frames) subtracted first
    energy = power.sum(1)
    quiet = energy <= np.percentile(energy, 20)
    noise = power[quiet].mean(0) if quiet.any() else 0.0
    # only the most periodic voiced frames: reverberant tails and frication spill are not
    clear = voiced & (periodicity >= np.percentile(periodicity[voiced], CLEAR_PERCENTILE))
    speech = np.maximum(power[clear] - SUBTRACT * noise, 0.03 * power[clear])
    logp = np.log(speech + 1e-10)
    cep = sfft.irfft(logp, NFFT, axis=1)
    cep[:, LIFTER:NFFT - LIFTER + 1] = 0
    envelope_hz = sfft.rfft(cep, NFFT, axis=1).real.mean(0)
    band_levels = np.log(bands.masks @ ltas + 1e-12)
    v = logf[voiced]
    return {
        "pitch": np.array([np.median(v), v.mean(), np.percentile(v, 10), np.percentile(v, 90)]),
        "perturbation": np.array([_log_spread(jitter), _log_spread(tremor),
                                  _log_spread(shimmer), tremor_depth(logf, runs)[0]]),
        "bands": band_levels - band_levels.mean(),
        "envelope": _envelope(envelope_hz, bands.freqs),
    }


def make_template(measured: list[dict], rounds: int = 2) -> np.ndarray:
    """The population's envelope: the mean, re-estimated after aligning every utterance to
    it (so the template is sharp rather than the blur of many tract lengths)."""
    envs = np.stack([m["envelope"] for m in measured])
    template = envs.mean(0)
    for _ in range(rounds):
        aligned = []
        for e in envs:
            s = int(round(spectral_shift(e, template)))
            aligned.append(np.roll(e, -s))
        template = np.mean(aligned, 0)
    return template


@dataclass
class Templates:
    """One envelope template per pitch register, and the shift between them.

    Lower and higher voices differ in tract length by 15-20 % (the offset), so one template
    puts the extremes of each group 30-40 % away from it, where the alignment can lock onto the
    neighbouring formant (the smallest tracts of the seed-1 world measured +3 % instead of
    +30 %). Each utterance is aligned with the template of its own register (its median
    pitch against the midpoint of the two clusters of median pitch) and the shift of the
    higher template against the lower is added back, so every shift is on one scale."""

    threshold: float          # log f0 between the registers
    low: np.ndarray
    high: np.ndarray
    offset: float             # shift of ``high`` against ``low``

    def shift(self, m: dict) -> float:
        if m["pitch"][0] >= self.threshold:
            return spectral_shift(m["envelope"], self.high) + self.offset
        return spectral_shift(m["envelope"], self.low)


def make_templates(measured: list[dict]) -> Templates:
    """``Templates`` of a population of measured utterances (one template for both
    registers when either has fewer than two utterances)."""
    pitch = np.array([m["pitch"][0] for m in measured])
    lo, hi = np.percentile(pitch, 25), np.percentile(pitch, 75)
    for _ in range(50):                       # two-means on the median log pitch
        threshold = (lo + hi) / 2
        if (pitch < threshold).all() or (pitch >= threshold).all():
            break
        lo, hi = pitch[pitch < threshold].mean(), pitch[pitch >= threshold].mean()
    threshold = (lo + hi) / 2
    groups = [[m for m, p in zip(measured, pitch) if (p >= threshold) == high]
              for high in (False, True)]
    if min(map(len, groups)) < 2:
        template = make_template(measured)
        return Templates(threshold, template, template, 0.0)
    low, high = (make_template(g) for g in groups)
    return Templates(threshold, low, high, spectral_shift(high, low))


def features(measured: list[dict], templates: Templates) -> np.ndarray:
    """``[N, D]`` feature matrix: pitch, perturbation and the spectral shift (the core),
    the band levels, and the core's pairwise products (age and size act on pitch and
    perturbation together, and differently in the two registers: a linear readout of
    the products is the "small regression" that hears it)."""
    core = np.stack([np.concatenate([m["pitch"], m["perturbation"], [templates.shift(m)]])
                     for m in measured])
    bands = np.stack([m["bands"] for m in measured])
    i, j = np.triu_indices(core.shape[1])
    return np.concatenate([core, bands, core[:, i] * core[:, j]], 1)


# --- the readout -------------------------------------------------------------------------

class LinearProbe:
    """Ridge regression on standardised inputs: ``X [N, D] -> Y [N, K]``."""

    def __init__(self, ridge: float = 1e-2, clip: float = 5.0):
        self.ridge, self.clip = ridge, clip

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LinearProbe":
        x, y = np.asarray(x, float), np.asarray(y, float)
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-8
        xs = self._standard(x)
        self.y_mean = y.mean(0)
        gram = xs.T @ xs + self.ridge * len(xs) * np.eye(xs.shape[1])
        self.weight = np.linalg.solve(gram, xs.T @ (y - self.y_mean))
        return self

    def _standard(self, x: np.ndarray) -> np.ndarray:
        # clipped at 5 sd: a clip the tracker fails on (no voiced run, say) must not
        # extrapolate the line far outside what it was fitted on
        return np.clip((np.asarray(x, float) - self.mean) / self.scale, -self.clip, self.clip)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._standard(x) @ self.weight + self.y_mean


def r_squared(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per column: 1 - residual variance / variance of the truth."""
    return 1 - ((pred - true) ** 2).mean(0) / true.var(0)


def readout(train_x, train_o, test_x, test_identity, test_o, shared, genders, sigma,
            ridge: float = 1e-2) -> dict:
    """Fit ``x -> o`` on training utterances, predict the test utterances' ``o`` and score
    the Bayes rule with it (every test utterance against every imposter).

    ``shared`` [M, 3] and ``genders`` [M] describe the test identities, ``test_identity``
    indexes them, ``test_o`` [N, 3] is each test utterance's true ``o``."""
    probe = LinearProbe(ridge).fit(train_x, train_o)
    o_hat = probe.predict(test_x)
    scores = match_accuracy(o_hat, test_identity, shared, genders, sigma)
    exact = match_accuracy(test_o, test_identity, shared, genders, sigma)
    return {"r2": dict(zip(ATTRIBUTES, r_squared(o_hat, test_o).round(4).tolist())),
            **scores, "true_o": exact}


# --- the world's utterances ----------------------------------------------------------------

def _measure_flac(data: bytes) -> dict:
    import soundfile as sf
    x, sr = sf.read(io.BytesIO(data), dtype="float32")
    return measure(x, sr)


def _map(fn, items, workers: int):
    if workers <= 1:
        return [fn(i) for i in items]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers) as pool:
        return pool.map(fn, items, chunksize=16)


def read_split(root, manifest, split: str, per_identity: int | None):
    """(identity, flac bytes) of a split's samples, at most ``per_identity`` per identity."""
    from pathlib import Path

    from datamodules.shards import iter_tar
    import json
    out, seen = [], {}
    for shard in manifest["splits"][split]["shards"]:
        for s in iter_tar(Path(root) / "shards" / shard["name"]):
            ident = json.loads(s["json"])["identity"]
            if per_identity is not None and seen.get(ident, 0) >= per_identity:
                continue
            seen[ident] = seen.get(ident, 0) + 1
            out.append((ident, s["flac"]))
    return out


def load_world(root):
    """A synthetic world's manifest, config and identity table (regenerated from the
    manifest's ``source``: the hidden attributes and ``o`` are not in the shards)."""
    from datamodules.shards import read_manifest

    from .world import WorldConfig, sample_identities

    manifest = read_manifest(root)
    if manifest.get("kind") != "synthetic":
        raise ValueError(f"{root} is not a synthetic world: nothing to audit")
    source = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["source"].items()
              if k != "generator"}
    config = WorldConfig(**source)
    return manifest, config, sample_identities(config)


@dataclass(frozen=True)
class HiddenAttributes:
    """What a synthetic world keeps out of its data, by identity index: the shared
    attributes ``z`` of each identity's face and voice, the attributes ``o`` its voice
    observes (o = z + sigma * eps, one draw per identity) and the noise ``sigma``."""

    z: np.ndarray       # [identities, K]
    o: np.ndarray       # [identities, K]
    sigma: np.ndarray   # [K]

    @classmethod
    def of_world(cls, root: str | Path) -> "HiddenAttributes":
        """Regenerated from the manifest's ``source`` (``load_world``); a
        ``ValueError`` for data that is not a synthetic world."""
        _, config, identities = load_world(root)
        return cls.of_identities(config, identities)

    @classmethod
    def of_identities(cls, config, identities) -> "HiddenAttributes":
        """From a world's config and its regenerated identity table (``load_world``'s)."""
        return cls(np.stack([i.shared for i in identities]),
                   np.array([i.voice.observed for i in identities]),
                   np.asarray(config.voice_noise, float))


def hidden_attributes(data, identities: list[dict]) -> "HiddenAttributes | None":
    """The synthetic world's hidden attributes (``HiddenAttributes``) of the data
    in ``data`` whose identity table is ``identities`` (the datamodule's), or None for data
    that is no synthetic world: ``load_world`` raises, or the world that the manifest's
    ``source`` regenerates is not the one of the identity table (its names by index). The
    world is regenerated once."""
    try:
        _, config, regenerated = load_world(data)
    except (ValueError, KeyError, TypeError):
        return None
    names = {i.index: i.name for i in regenerated}
    if any(names.get(i["index"]) != i["name"] for i in identities):
        return None
    return HiddenAttributes.of_identities(config, regenerated)


def audit_world(root, fit_per_identity: int | None = 3, workers: int = 1) -> dict:
    """The audio-only oracle of the world in ``root``: its test-split 1:2 accuracy
    (unstratified and same-gender) and R² per attribute, beside the ceiling.

    Fitted on ``fit_per_identity`` utterances of each training identity (all with
    ``None``), scored on every test utterance."""
    manifest, config, identities = load_world(root)
    train = read_split(root, manifest, "train", fit_per_identity)
    test = read_split(root, manifest, "test", None)
    measured = _map(_measure_flac, [f for _, f in train + test], workers)
    return audit_measurements(measured[:len(train)], [i for i, _ in train],
                              measured[len(train):], [i for i, _ in test], identities, config)


def audit_measurements(train_m, train_ids, test_m, test_ids, identities, config) -> dict:
    """The oracle's readout from measurements of training and test utterances."""
    templates = make_templates(train_m)
    return readout_world(features(train_m, templates), train_ids, features(test_m, templates),
                         test_ids, identities, config, ridge=ORACLE_RIDGE)


def readout_world(train_x, train_ids, test_x, test_ids, identities, config,
                  ridge: float = 1e-2) -> dict:
    """``readout`` for utterances given by their identities' indices in the world's table;
    any per-utterance vectors (measurements, embeddings) as ``train_x`` / ``test_x``."""
    o = np.array([identities[i].voice.observed for i in range(len(identities))])
    members = sorted(set(test_ids))
    where = {ident: k for k, ident in enumerate(members)}
    result = readout(train_x, o[list(train_ids)], test_x,
                     np.array([where[i] for i in test_ids]), o[list(test_ids)],
                     np.stack([identities[i].shared for i in members]),
                     np.array([identities[i].gender for i in members]), config.voice_noise,
                     ridge)
    result["utterances"] = {"fit": len(train_x), "test": len(test_x)}
    result["ceiling"] = world_ceilings(identities, config)
    return result


def format_rows(rows: dict[str, dict], ceiling: dict) -> str:
    """A text table: the ceiling, then one row per readout (oracle, embeddings, ...)."""
    lines = [f"{'':28s} {'1:2':>6s} {'same-g':>6s}   R² gender   age  size",
             f"{'Bayes ceiling (expected)':28s} {ceiling['match_1to2']:6.3f} "
             f"{ceiling['match_1to2_gender']:6.3f}"]
    first = next(iter(rows.values()))
    t = first["true_o"]
    lines.append(f"{'Bayes rule, true o':28s} {t['match_1to2']:6.3f} {t['match_1to2_gender']:6.3f}")
    for name, r in rows.items():
        r2 = r["r2"]
        lines.append(f"{name:28s} {r['match_1to2']:6.3f} {r['match_1to2_gender']:6.3f}   "
                     f"{r2['gender']:9.3f} {r2['age']:5.3f} {r2['size']:5.3f}")
    return "\n".join(lines)
