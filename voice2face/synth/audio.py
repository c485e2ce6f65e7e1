"""Source–filter speech synthesis for the synthetic world.

A classic formant synthesiser (Fant 1960; Klatt 1980, "Software for a cascade/parallel
formant synthesizer"), vectorised with numpy:

* Source: a Rosenberg (1971) glottal pulse train, differentiated (the lip radiation's
  +6 dB/octave), at the speaker's pitch with per-cycle jitter and shimmer, a 4–7 Hz tremor,
  intonation (declination, pitch accents on stressed syllables, a final fall or rise) and
  pulse-synchronous aspiration noise for breathy voices.
* Filter: five formant resonators in cascade whose frequencies follow the phone sequence and
  scale with ``17 cm / vocal-tract length`` (formants of a uniform tube scale inversely with
  its length). Vowel targets are Peterson & Barney's (1952) averages for men.
* Consonants: nasals and approximants as low-amplitude formant patterns, fricatives as
  band-passed noise whose centre also scales with the tract, stops as closure + burst
  (+ aspiration for voiceless ones). Syllables (C)(C)V(C), words of 1–3 syllables, so the
  content differs between utterances.
* Recording: a random room (late reverberation as exponentially decaying noise), channel
  tilt and coloured background noise (sometimes mains hum) at a random SNR.

The filters are time-varying (new formants and frication bands every 20 ms). Running IIR
filters block by block from Python costs more than the rest of the synthesis together, so
they are applied by windowed overlap-add in the frequency domain, all frames in one batched
FFT (``_frames``, ``_cascade_response``, ``_overlap_add``); a test checks the result against
the IIR cascade.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy.ndimage import convolve1d
from scipy.signal import lfilter

from .world import UTTERANCE, Identity, WorldConfig, rng_for

REF_VTL = 17.0                      # cm; the length the formant table below is for
BLOCK_MS = 20                       # formant filter update interval
CROSSFADE = 64                      # samples over which one block's filter fades into the next
RINGING = 320                       # room left in each frame's FFT for its filter's decay
_PULSE_TABLE = 4096
NEUTRAL = np.array([500.0, 1500.0, 2500.0])   # schwa of a 17 cm tube: (2k-1) c / 4L
HIGHER = np.array([3500.0, 4500.0])           # F4, F5 at 17 cm
UTTERANCE_PITCH_SD = 0.01           # an utterance's own pitch offset, in log f0
REVERB_WET = (0.05, 0.2)            # late reverberation amplitude relative to the direct sound
BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0, 280.0])
FRICATION_BANDS = ((1800.0, 3000.0), (3000.0, 1500.0), (5500.0, 2200.0))  # (centre, bw) at 17 cm


@dataclass(frozen=True)
class Phone:
    formants: tuple[float, float, float] | None   # F1–F3 at 17 cm; None: take the next vowel's
    voicing: float = 0.0
    aspiration: float = 0.0
    frication: tuple[float, float, float] = (0.0, 0.0, 0.0)   # broad, mid, high band levels
    bandwidth: float = 1.0          # bandwidth multiplier (nasals are damped)
    ms: tuple[int, int] = (50, 90)  # duration range at speaking rate 1


VOWELS = {
    "i": (270, 2290, 3010), "I": (390, 1990, 2550), "e": (530, 1840, 2480),
    "ae": (660, 1720, 2410), "a": (730, 1090, 2440), "o": (570, 840, 2410),
    "U": (440, 1020, 2240), "u": (300, 870, 2240), "V": (640, 1190, 2390), "3": (490, 1350, 1690),
}
CONSONANTS = {
    "m": Phone((250, 1000, 2300), voicing=0.35, bandwidth=2.0, ms=(50, 90)),
    "n": Phone((250, 1500, 2500), voicing=0.35, bandwidth=2.0, ms=(45, 85)),
    "l": Phone((360, 1300, 2700), voicing=0.7, ms=(40, 80)),
    "r": Phone((420, 1300, 1600), voicing=0.7, ms=(40, 80)),
    "w": Phone((300, 700, 2200), voicing=0.7, ms=(40, 70)),
    "j": Phone((280, 2250, 2900), voicing=0.7, ms=(40, 70)),
    "s": Phone(None, frication=(0.0, 0.0, 0.4), ms=(80, 140)),
    "z": Phone(None, voicing=0.3, frication=(0.0, 0.0, 0.25), ms=(60, 110)),
    "S": Phone(None, frication=(0.0, 0.4, 0.05), ms=(80, 140)),
    "f": Phone(None, frication=(0.15, 0.0, 0.05), ms=(70, 120)),
    "v": Phone(None, voicing=0.35, frication=(0.1, 0.0, 0.0), ms=(50, 90)),
    "h": Phone(None, aspiration=0.5, ms=(50, 80)),
}
# stops: (burst band levels, voiced)
STOPS = {"p": ((0.5, 0.1, 0.0), False), "t": ((0.1, 0.2, 0.6), False),
         "k": ((0.2, 0.6, 0.1), False), "b": ((0.3, 0.05, 0.0), True),
         "d": ((0.05, 0.1, 0.35), True), "g": ((0.1, 0.35, 0.05), True)}
ONSETS = list(CONSONANTS) + list(STOPS)
CODAS = ["m", "n", "l", "r", "s", "z", "f", "t", "k", "p", "d"]
CLUSTERS = [("s", "t"), ("s", "p"), ("s", "k"), ("p", "r"), ("t", "r"), ("k", "l"), ("b", "l"),
            ("g", "r"), ("f", "r")]


# --- the phone plan ------------------------------------------------------------------------

def _segments(rng: np.random.Generator, total_ms: int, rate: float, articulation: float):
    """Segments filling ``total_ms``: arrays of duration (ms), F1–F3, voicing, aspiration,
    frication bands, bandwidth factor, and whether the segment is a stressed vowel."""
    segs: list[tuple] = []      # (ms, formants|None, voicing, asp, fric, bw, stressed)

    used = 0

    def add(phone: Phone, ms: float, stressed=False):
        nonlocal used
        segs.append((max(1, int(ms)), phone.formants, phone.voicing, phone.aspiration,
                     phone.frication, phone.bandwidth, stressed))
        used += segs[-1][0]

    def consonant(c: str):
        if c in STOPS:
            burst, voiced = STOPS[c]
            add(Phone(None, voicing=0.12 if voiced else 0.0), rng.uniform(35, 70) / rate)
            add(Phone(None, frication=burst), rng.uniform(8, 15) / rate)
            if not voiced:
                add(Phone(None, aspiration=0.35), rng.uniform(20, 40) / rate)
        else:
            add(CONSONANTS[c], rng.uniform(*CONSONANTS[c].ms) / rate)

    vowels = list(VOWELS)
    add(Phone(None), rng.uniform(80, 250))                     # leading silence
    while used < total_ms:
        n_syll = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
        stress = int(rng.integers(n_syll))
        for k in range(n_syll):
            r = rng.random()
            if r < 0.15:
                for c in CLUSTERS[int(rng.integers(len(CLUSTERS)))]:
                    consonant(c)
            elif r < 0.82:
                consonant(ONSETS[int(rng.integers(len(ONSETS)))])
            ms = rng.uniform(120, 220) if k == stress else rng.uniform(60, 110)
            v = vowels[int(rng.integers(len(vowels)))]
            if rng.random() < 0.12:                               # diphthong
                w = vowels[int(rng.integers(len(vowels)))]
                add(Phone(VOWELS[v], voicing=1.0), 0.55 * ms / rate, k == stress)
                add(Phone(VOWELS[w], voicing=1.0), 0.45 * ms / rate)
            else:
                add(Phone(VOWELS[v], voicing=1.0), ms / rate, k == stress)
            if rng.random() < 0.45:
                consonant(CODAS[int(rng.integers(len(CODAS)))])
        if rng.random() < 0.2:                                    # pause between words
            add(Phone(None), rng.uniform(100, 350))

    ms = np.array([s[0] for s in segs])
    start = np.concatenate([[0], np.cumsum(ms)[:-1]])
    keep = start < total_ms                                       # cut to the exact length
    ms = np.minimum(ms, total_ms - start)
    # a consonant takes the formants of the vowel it leads into (coarticulation)
    formants, nxt = [None] * len(segs), None
    for k in range(len(segs) - 1, -1, -1):
        nxt = segs[k][1] if segs[k][1] is not None else nxt
        formants[k] = segs[k][1] if segs[k][1] is not None else nxt
    prev = tuple(NEUTRAL)
    for k in range(len(segs)):
        formants[k] = formants[k] or prev
        prev = formants[k]
    f = np.log(np.array(formants, float))
    f = np.log(NEUTRAL) + articulation * (f - np.log(NEUTRAL))
    return (ms[keep], np.exp(f)[keep],
            np.array([s[2] for s in segs])[keep], np.array([s[3] for s in segs])[keep],
            np.array([s[4] for s in segs])[keep], np.array([s[5] for s in segs])[keep],
            np.array([s[6] for s in segs])[keep])


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Hann-window moving average along axis 0, edges held."""
    w = np.hanning(width + 2)[1:-1]
    return convolve1d(x, w / w.sum(), axis=0, mode="nearest")


# --- signal pieces -------------------------------------------------------------------------

def _frames(x: np.ndarray, n_blocks: int, hop: int, rows: np.ndarray | None = None) -> np.ndarray:
    """``[n_blocks, hop + CROSSFADE]`` float32 frames of ``x`` (only ``rows`` if given),
    frame ``b`` centred on block ``b`` under a trapezoid window; the windows' linear ramps
    overlap and sum to one."""
    half = CROSSFADE // 2
    padded = np.zeros(n_blocks * hop + CROSSFADE, np.float32)
    padded[half:half + len(x)] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, hop + CROSSFADE)[::hop][:n_blocks]
    return (frames if rows is None else frames[rows]) * _trapezoid(hop)


@functools.lru_cache(maxsize=4)
def _trapezoid(hop: int) -> np.ndarray:
    ramp = (np.arange(CROSSFADE, dtype=np.float32) + 0.5) / CROSSFADE
    return np.concatenate([ramp, np.ones(hop - CROSSFADE, np.float32), ramp[::-1]])


def _overlap_add(out: np.ndarray, hop: int, n: int) -> np.ndarray:
    """Sum filtered frames ``[n_blocks, nfft]`` back into a signal of ``n`` samples."""
    n_blocks, nfft = out.shape
    strips = -(-nfft // hop)            # strip k of frame b lands on block b + k
    y = np.zeros((n_blocks + strips, hop), np.float32)
    for k in range(strips):
        width = min(hop, nfft - k * hop)
        y[k:k + n_blocks, :width] += out[:, k * hop:k * hop + width]
    half = CROSSFADE // 2
    return y.reshape(-1)[half:half + n]


def _fft_size(hop: int) -> int:
    return sfft.next_fast_len(hop + CROSSFADE + RINGING, real=True)


def _cascade_response(freqs: np.ndarray, widths: np.ndarray, nfft: int, sr: int) -> np.ndarray:
    """``[n_blocks, nfft // 2 + 1]`` response of each block's cascade of unity-DC-gain
    resonators (Klatt 1980): ``prod (1 - c + r^2) / A(z)``, ``A`` the product of the
    resonators' ``1 - c z^-1 + r^2 z^-2``, evaluated as one batched FFT of ``A``'s eleven
    coefficients. Single precision puts resonance peaks within ~1%."""
    r2 = np.exp(-2 * math.pi * widths / sr)
    c = 2 * np.sqrt(r2) * np.cos(2 * math.pi * np.minimum(freqs, 0.45 * sr) / sr)
    poly = np.zeros((len(freqs), 2 * freqs.shape[1] + 1), np.float32)
    poly[:, 0] = 1.0
    for f in range(freqs.shape[1]):
        shifted = poly.copy()
        poly[:, 1:] -= c[:, f, None].astype(np.float32) * shifted[:, :-1]
        poly[:, 2:] += r2[:, f, None].astype(np.float32) * shifted[:, :-2]
    a = sfft.rfft(poly, nfft)
    # gain / A as gain conj(A) / |A|^2: cheaper than numpy's careful complex division
    inverse = np.prod(1 - c + r2, axis=1)[:, None].astype(np.float32) / (a.real ** 2 + a.imag ** 2)
    return a.conj() * inverse


@functools.lru_cache(maxsize=4096)
def _band_response(centre: float, bw: float, nfft: int, sr: int) -> np.ndarray:
    """Response of a two-pole band-pass (zeros at DC and Nyquist) squared, for steeper
    skirts, scaled so that white noise comes out at unit variance."""
    r = math.exp(-math.pi * bw / sr)
    z1 = np.exp(-2j * np.pi * np.arange(nfft // 2 + 1) / nfft)
    h = ((1 - z1 * z1) / (1 - 2 * r * math.cos(2 * math.pi * min(centre, 0.45 * sr) / sr) * z1
                          + r * r * z1 * z1)) ** 2
    power = 2 * (np.abs(h) ** 2).sum() - np.abs(h[0]) ** 2 - np.abs(h[-1]) ** 2
    return (h / np.sqrt(power / nfft)).astype(np.complex64)


def _sumsq(x: np.ndarray) -> float:
    """Sum of squares in one pass, without BLAS (whose threads fight the worker processes)."""
    return float(np.einsum("i,i->", x, x))


def _frame_energy(spectra: np.ndarray, nfft: int) -> np.ndarray:
    """Energy of each frame's output from its half spectrum (Parseval)."""
    power = np.abs(spectra) ** 2
    return (2 * power.sum(1) - power[:, 0] - power[:, -1]) / nfft


@functools.lru_cache(maxsize=256)
def _pulse_slope(open_q: float, speed: float) -> np.ndarray:
    """One period of the Rosenberg flow's derivative, tabulated: d flow / d phase of
    0.5 (1 - cos(pi t / tp)) while opening and cos(pi/2 (t - tp) / tn) while closing,
    ``speed = tp / tn``. The abrupt end of the closing phase is the main excitation."""
    tp, tn = open_q * speed / (1 + speed), open_q / (1 + speed)
    grid = (np.arange(_PULSE_TABLE) + 0.5) / _PULSE_TABLE
    opening = 0.5 * np.pi / tp * np.sin(np.pi * grid / tp)
    closing = -0.5 * np.pi / tn * np.sin(0.5 * np.pi * (grid - tp) / tn)
    slope = np.where(grid < tp, opening, np.where(grid < tp + tn, closing, 0.0))
    return slope.astype(np.float32)


def _glottal_source(f0: np.ndarray, voice, rng: np.random.Generator, sr: int):
    """Differentiated Rosenberg pulses along the sample-rate pitch track ``f0``, with
    shimmer drawn per cycle, and the open-phase mask (for pulse-synchronous aspiration).

    The pulse shape is tabulated per period: the flow derivative at each sample is a table
    lookup at its phase (ten times cheaper than evaluating cosines)."""
    phase = np.cumsum(f0 * (1.0 / sr))
    cycle = phase.astype(np.int32)
    index = ((phase - cycle) * _PULSE_TABLE).astype(np.int32)     # position in the period
    open_q = 0.45 + 0.3 * voice.breathiness
    table = _pulse_slope(round(open_q, 4), round(2.8 - 1.3 * voice.breathiness, 4))
    shimmer = np.exp(voice.shimmer * rng.standard_normal(int(cycle[-1]) + 2)).astype(np.float32)
    pulse = table.take(index) * shimmer.take(cycle)
    return pulse, index < int(open_q * _PULSE_TABLE)


def _late_reverb(spectra: np.ndarray, rng: np.random.Generator, hop: int, sr: int) -> np.ndarray:
    """Statistical late reverberation of framed spectra ``[n_blocks, bins]`` (Polack 1988:
    a reverberant tail is Gaussian noise whose power decays exponentially): in every bin the
    tail's power is the past frames' power decaying at RT60 0.15–0.6 s, and its phases are
    random. Adding it in the frame domain costs a recursion over blocks instead of a
    convolution with a long room response. The tail carries 15–50% of the direct sound's
    amplitude (reverberant to dry ratio -16 to -6 dB)."""
    rt60 = rng.uniform(0.15, 0.6)
    decay = 10 ** (-6 * hop / sr / rt60)                    # power, per block
    power = spectra.real ** 2 + spectra.imag ** 2
    tail = lfilter([0.0, 1.0 - decay], [1.0, -decay], power, axis=0)   # past blocks only
    phases = _phases(spectra.shape[1])
    start = int(rng.integers(len(phases) - len(spectra)))
    wet = np.float32(rng.uniform(*REVERB_WET))
    return (wet * np.sqrt(tail)).astype(np.float32) * phases[start:start + len(spectra)]


@functools.lru_cache(maxsize=2)
def _phases(bins: int) -> np.ndarray:
    """A fixed table of random unit phasors; utterances read it from random rows."""
    angle = np.random.default_rng(12345).uniform(0, 2 * np.pi, (4096, bins))
    return np.exp(1j * angle).astype(np.complex64)


def _recording(speech: np.ndarray, white: np.ndarray, snr_db: tuple[float, float],
               rng: np.random.Generator, sr: int) -> np.ndarray:
    """Channel and background noise (the room is added in the frame domain, ``_late_reverb``).

    * channel: a first-order tilt ``1 - g z^-1`` (bright to muffled microphones);
    * noise between white and brown (white mixed with a random one-pole low-pass of
      itself; ``white`` is unit white noise) at an SNR drawn from ``snr_db``, sometimes
      with mains hum.

    Single precision throughout: the result is stored as 16-bit audio.
    """
    n = len(speech)
    out = speech.astype(np.float32)
    out[1:] -= np.float32(rng.uniform(-0.4, 0.7)) * out[:-1].copy()
    low = lfilter([1.0], [1.0, -rng.uniform(0.9, 0.995)], white).astype(np.float32)
    mix = np.float32(rng.uniform(0.0, 1.0))
    noise = (1 - mix) * white + mix * low * np.float32(1 / (low.std() + 1e-12))
    if rng.random() < 0.2:
        t = np.arange(n, dtype=np.float32) / np.float32(sr)   # float32 sines are SIMD-fast
        mains = 50.0 if rng.random() < 0.5 else 60.0
        phase = rng.uniform(0, 2 * np.pi)
        hum = sum(np.sin(np.float32(2 * np.pi * mains * h) * t + np.float32(h * phase)) / h
                  for h in (1, 2, 3))
        noise += np.float32(rng.uniform(0.3, 1.5)) * hum
    snr = rng.uniform(*snr_db)
    rms = lambda x: np.sqrt(_sumsq(x) / len(x))
    return out + np.float32(rms(out) / rms(noise) * 10 ** (-snr / 20)) * noise


# --- the utterance -------------------------------------------------------------------------

def render_utterance(identity: Identity, number: int, config: WorldConfig,
                     clean: bool = False) -> np.ndarray:
    """Utterance ``number`` of ``identity``: float32 mono in [-1, 1] at ``config.sample_rate``.

    Deterministic in ``(config.seed, identity.index, number)``. ``clean=True`` leaves out
    the room, channel and background noise (for tests and listening), not the intonation.
    """
    rng = rng_for(config.seed, UTTERANCE, identity.index, number)
    voice, sr = identity.voice, config.sample_rate
    if sr % 1000:
        raise ValueError("sample_rate must be a whole number of kHz")
    spm = sr // 1000                                   # samples per millisecond
    total_ms = int(round(rng.uniform(*config.seconds) * 1000))
    n = total_ms * spm

    rate = voice.rate * math.exp(rng.normal(0, 0.05))
    ms, formants, voicing, asp, fric, bw, stressed = _segments(rng, total_ms, rate,
                                                                voice.articulation)
    starts = np.concatenate([[0], np.cumsum(ms)[:-1]])

    # Millisecond tracks of the envelopes, smoothed over a few ms; formants and bandwidths
    # per 20 ms block, smoothed over ~40 ms (coarticulation).
    rep = lambda a: np.repeat(a, ms, axis=0)
    k = REF_VTL / voice.vtl
    env_voice = _smooth(rep(voicing), 9)
    env_asp = _smooth(rep(asp), 7)
    env_fric = _smooth(rep(fric), 5)
    block_starts = np.arange(0, total_ms, BLOCK_MS)
    n_blocks = len(block_starts)
    counts = np.minimum(BLOCK_MS, total_ms - block_starts)
    block_mean = lambda x: (np.add.reduceat(x, block_starts, axis=0).T / counts).T
    neighbours = np.array([0.25, 0.5, 0.25])
    f_blk = np.exp(convolve1d(block_mean(rep(np.log(formants))), neighbours, axis=0,
                              mode="nearest"))
    bw_blk = convolve1d(block_mean(rep(bw)), neighbours, mode="nearest")

    # Intonation in log f0: declination, accents on some stressed vowels, a final movement,
    # slow wander and tremor; the utterance also has its own small pitch offset.
    t = np.arange(total_ms) / 1000.0
    spoken = np.nonzero(voicing > 0.5)[0]
    logf = np.full(total_ms, math.log(voice.f0) + rng.normal(0, UTTERANCE_PITCH_SD))
    movement = -0.12 * (t / t[-1] - 0.5)
    # A 100 ms accent (+-4 sd): broad enough to leave the tremor's 4-7 Hz band alone (a
    # 60 ms one put as much power there as a young voice's tremor has).
    w = 400
    bump = np.exp(-0.5 * (np.arange(-w, w + 1) / 100.0) ** 2)
    for s in np.nonzero(stressed)[0]:
        if rng.random() < 0.6:
            centre = int(starts[s] + ms[s] // 2)
            lo, hi = max(0, centre - w), min(total_ms, centre + w + 1)
            movement[lo:hi] += rng.uniform(0.04, 0.14) * bump[lo - centre + w: hi - centre + w]
    if len(spoken):
        end = (starts[spoken[-1]] + ms[spoken[-1]]) / 1000
        ramp = np.clip((t - (end - 0.3)) / 0.3, 0, 1)
        movement += (0.12 if rng.random() < 0.2 else -0.08) * ramp
    # The wander is a random walk on 100 ms knots, so it has next to no power at the
    # tremor's 4-7 Hz (a walk on 20 ms knots put as much there as a young voice's tremor).
    knots = int(t[-1] / 0.1) + 2
    walk = np.cumsum(rng.standard_normal(knots)) * 0.02
    wander = np.interp(t, np.arange(knots) * 0.1, walk)
    # Intonation moves the pitch around the speaker's own, not away from it: its mean over
    # the voiced part is removed, so that it cannot pass for a lower or higher voice.
    contour = voice.pitch_range * movement + wander
    voiced_ms = rep(voicing) > 0.5
    contour -= contour[voiced_ms].mean() if voiced_ms.any() else contour.mean()
    logf += contour
    logf += voice.tremor * np.sin(2 * np.pi * rng.uniform(4, 7) * t + rng.uniform(0, 2 * np.pi))
    # Jitter: the period wanders from one cycle to the next; drawn per mean period on the
    # millisecond track (cheaper than per actual cycle, and the same spectrum).
    period_ms = 1000.0 / voice.f0
    jitter = voice.jitter * rng.standard_normal(int(total_ms / period_ms) + 2)
    logf += jitter[(np.arange(total_ms) / period_ms).astype(int)]
    f0 = np.repeat(np.exp(logf), spm)

    # Source: pulses + breath noise (louder in the open phase), and aspiration for /h/ and
    # after voiceless stops; both go through the vocal tract.
    pulse, open_phase = _glottal_source(f0, voice, rng, sr)
    level = float(np.sqrt(_sumsq(pulse) / n))
    # One white noise serves breath, aspiration and frication: they barely overlap in time.
    white = rng.standard_normal(n, dtype=np.float32)
    breath = np.where(open_phase, np.float32(1.0), np.float32(0.4)) * np.float32(
        level * (0.03 + 0.5 * voice.breathiness ** 2))
    by_ms = lambda x: x.reshape(total_ms, spm)           # envelopes apply per millisecond
    source = by_ms(pulse + breath * white) * env_voice[:, None].astype(np.float32)
    source += by_ms(white) * (level * env_asp)[:, None].astype(np.float32)

    # Filters, one setting per block: the vocal tract (five resonators, formants scaled by
    # 17 cm / vtl; breathy voices have a wider F1) for the voice, and for frication the
    # blend of noise bands the block's consonants call for (centres move with the tract,
    # half as much as formants do: the front cavity is only part of it).
    hop = BLOCK_MS * spm
    freqs = np.concatenate([f_blk, np.broadcast_to(HIGHER, (n_blocks, 2))], 1) * k
    widths = BANDWIDTHS * (1 + 0.6 * voice.breathiness * (np.arange(5) == 0)) * bw_blk[:, None]
    nfft = _fft_size(hop)
    voice_spec = sfft.rfft(_frames(source.reshape(-1), n_blocks, hop), nfft)
    voice_spec *= _cascade_response(freqs, widths, nfft, sr)
    # scale the voice to unit power over voiced blocks, the frication bands are unit-level
    voiced = block_mean(env_voice) > 0.3
    energy = _frame_energy(voice_spec[voiced] if voiced.any() else voice_spec, nfft)
    voice_spec *= np.float32(1 / math.sqrt(energy.mean() / hop + 1e-18))
    # Frication only where a frame touches a consonant (with its cross-fades: dilated).
    fric_env = env_fric.sum(1)
    active = np.maximum.reduceat(fric_env, block_starts) > 0
    active[1:] |= active[:-1].copy()
    active[:-1] |= active[1:].copy()
    if active.any():
        weights = block_mean(env_fric)[active]
        weights /= weights.sum(1, keepdims=True) + 1e-9
        bands = [_band_response(round(c * math.sqrt(k)), w, nfft, sr) for c, w in FRICATION_BANDS]
        blend = sum(weights[:, b, None].astype(np.float32) * h for b, h in enumerate(bands))
        fric = (by_ms(white) * fric_env[:, None].astype(np.float32)).reshape(-1)
        voice_spec[active] += sfft.rfft(_frames(fric, n_blocks, hop, active), nfft) * blend
    if not clean and rng.random() < 0.6:                    # a reverberant room
        voice_spec += _late_reverb(voice_spec, rng, hop, sr)
    speech = _overlap_add(sfft.irfft(voice_spec, nfft), hop, n)

    if not clean:
        # white noise at another time is independent of the frication's: a shifted copy
        # serves as the background's (random normals are a tenth of the synthesis cost)
        background = np.roll(white, int(rng.integers(n // 4, 3 * n // 4 + 1)))
        speech = _recording(speech, background, config.snr_db, rng, sr)

    gain = 10 ** (rng.uniform(-26, -20) / 20) / (speech.std() + 1e-9)
    speech *= min(gain, 0.98 / (np.abs(speech).max() + 1e-9))
    return speech.astype(np.float32)
