"""One utterance from a VoxCeleb file to the FLAC a shard stores.

decode (WAV, FLAC, OGG and, where libsndfile reads it, MP3 with soundfile; VoxCeleb2's AAC
``.m4a`` and anything else FFmpeg reads with PyAV) -> downmix ->
resample to 16 kHz -> trim silence with WebRTC's voice activity detector -> minimum length
-> 16-bit FLAC. Wen et al. (NeurIPS 2019) trimmed VoxCeleb's silences with webrtcvad at
aggressiveness 2 on 20 ms frames; those are the defaults.

webrtcvad alone takes steady noise for speech (3 s of white noise pass whole), so what it
keeps must also rise and fall in loudness at syllable rates, as speech does: the syllabic
modulation (``syllabic_modulation_db``) is at least ``min_modulation_db``. Measured with the
defaults: white and pink noise 0.1-0.5 dB in 1-10 s clips (up to 0.7 dB in 0.3 s ones); the
synthetic world's utterances 3.6-14.7 dB (1.2 dB and up with white noise as loud as the
voice mixed in); the tests' speech-like signals 9.5-12 dB.

Every failure of a single file is a :class:`Skip` with its reason, never a crash.
``voice2face generate`` reads its recordings with the same ``read_audio``, ``resample`` and
``trim_silence``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf
import torch
import torchaudio.functional as AF
import webrtcvad

from datamodules.shards import encode_flac
from voice2face.constants import SAMPLE_RATE

from .report import EMPTY_AUDIO, NO_SPEECH, TOO_SHORT, UNREADABLE_AUDIO, Skip

# formats libsndfile reads directly (MP3 since libsndfile 1.1, when built with it); anything
# else (m4a, aac, mp4, ...) goes through PyAV
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg"} | ({".mp3"} if "MP3" in sf.available_formats() else set())


@dataclass(frozen=True)
class AudioSettings:
    sample_rate: int = SAMPLE_RATE
    vad: bool = True
    aggressiveness: int = 2       # webrtcvad mode, 0 (keeps most) .. 3 (drops most)
    frame_ms: int = 20            # webrtcvad accepts 10, 20 or 30 ms frames
    padding_ms: int = 200         # audio kept on each side of detected speech
    min_seconds: float = 1.0      # after trimming
    # the least syllabic loudness modulation of speech (dB): white or pink noise has < 0.5
    min_modulation_db: float = 1.0

    def __post_init__(self):
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError("VAD aggressiveness must be 0, 1, 2 or 3")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("VAD frames must be 10, 20 or 30 ms")
        if self.padding_ms < 0 or self.min_seconds < 0 or self.min_modulation_db < 0:
            raise ValueError("VAD padding, the minimum duration and the minimum modulation "
                             "must be >= 0")
        if self.sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError("webrtcvad works at 8, 16, 32 or 48 kHz")

    def to_dict(self) -> dict:
        return asdict(self)


# --- decoding ----------------------------------------------------------------------------------

def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 waveform and sample rate of an audio file; :class:`Skip` if unreadable."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise Skip(EMPTY_AUDIO, "0-byte file")
        if path.suffix.lower() in SOUNDFILE_SUFFIXES:
            wave, sr = _read_soundfile(path)
        else:
            wave, sr = _read_av(path)
    except Skip:
        raise
    except Exception as e:  # libsndfile and FFmpeg raise many types for corrupt input
        raise Skip(UNREADABLE_AUDIO, f"{type(e).__name__}: {e}") from e
    if wave.size == 0:
        raise Skip(EMPTY_AUDIO, "no samples")
    if not np.isfinite(wave).all():
        raise Skip(UNREADABLE_AUDIO, "non-finite samples")
    return wave, sr


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    # libmpg123 inside libsndfile prints its resync notes on a corrupt MP3 to the process's
    # stderr (C level): kept out of the command's output, which names the file instead
    with _c_stderr_silenced():
        try:
            wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except sf.LibsndfileError as e:
            # libsndfile says "File does not exist or is not a regular file" of a file it
            # cannot parse, which misleads: the file exists
            kind = path.suffix.lstrip(".").upper() or "audio"
            raise Skip(UNREADABLE_AUDIO, f"libsndfile cannot decode it as {kind} (corrupt, "
                                         f"or not {kind})") from None
    return wave.mean(axis=1), int(sr)


@contextlib.contextmanager
def _c_stderr_silenced():
    """File descriptor 2 pointed at /dev/null for the block (C libraries write there)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# full scale of FFmpeg's integer sample formats
_FULL_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


def _read_av(path: Path) -> tuple[np.ndarray, int]:
    import av  # imported here: only VoxCeleb2 needs it

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise Skip(UNREADABLE_AUDIO, "no audio stream")
        stream = container.streams.audio[0]
        sr = stream.rate
        for frame in container.decode(stream):
            chunks.append(_frame_to_mono(frame))
            sr = frame.sample_rate
    if not chunks:
        return np.zeros(0, np.float32), int(sr or SAMPLE_RATE)
    return np.concatenate(chunks), int(sr)


def _frame_to_mono(frame) -> np.ndarray:
    """A decoded PyAV frame as mono float32, whatever FFmpeg's sample format."""
    data = frame.to_ndarray()
    fmt = frame.format.name.rstrip("p")
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:  # interleaved: one row of samples x channels
        data = data.reshape(-1, channels).T
    if fmt == "u8":
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif fmt in _FULL_SCALE:
        data = data.astype(np.float32) / _FULL_SCALE[fmt]
    return data.astype(np.float32).mean(axis=0)


def resample(wave: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if sr == target:
        return wave.astype(np.float32, copy=False)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave, np.float32)), sr, target)
    return out.numpy()


# --- silence trimming --------------------------------------------------------------------------

def speech_frames(wave: np.ndarray, settings: AudioSettings) -> np.ndarray:
    """webrtcvad's decision per frame of a waveform at ``settings.sample_rate``."""
    vad = webrtcvad.Vad(settings.aggressiveness)
    length = settings.sample_rate * settings.frame_ms // 1000
    pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2")
    n = len(pcm) // length
    return np.fromiter((vad.is_speech(pcm[i * length:(i + 1) * length].tobytes(),
                                      settings.sample_rate) for i in range(n)), bool, count=n)


# syllabic modulation: the loudness of the telephone band, in 25 ms windows every 10 ms,
# and how much of its variation lies at syllable rates
SPEECH_BAND_HZ = (300.0, 3400.0)
SYLLABLE_RATES_HZ = (2.0, 8.0)
ENVELOPE_WINDOW_MS, ENVELOPE_HOP_MS = 25, 10
ENVELOPE_RANGE_DB = 60.0  # quieter windows count as this far below the loudest


def syllabic_modulation_db(wave: np.ndarray, sample_rate: int) -> float:
    """How much the loudness of ``wave`` rises and falls at syllable rates: the standard
    deviation (dB) of the 2-8 Hz part of its log-energy envelope in the 300-3400 Hz band.

    Speech is a sequence of syllables, 2-8 a second, each a loud vowel between quieter
    consonants, so its loudness is modulated at those rates by several dB (Houtgast &
    Steeneken 1985: the modulation spectrum of speech peaks near 4 Hz). Stationary noise,
    white or coloured, has an envelope that only fluctuates by chance, spread over every
    modulation rate: a fraction of a dB. NaN for a wave shorter than two windows.
    """
    sos = scipy.signal.butter(4, SPEECH_BAND_HZ, "bandpass", fs=sample_rate, output="sos")
    x = scipy.signal.sosfilt(sos, np.asarray(wave, np.float64))
    win = sample_rate * ENVELOPE_WINDOW_MS // 1000
    hop = sample_rate * ENVELOPE_HOP_MS // 1000
    n = 1 + (len(x) - win) // hop if len(x) >= win else 0
    if n < 2:
        return float("nan")
    energy = (x[np.arange(win)[None] + hop * np.arange(n)[:, None]] ** 2).mean(axis=1)
    floor = energy.max() * 10 ** (-ENVELOPE_RANGE_DB / 10) + 1e-30
    db = 10 * np.log10(np.maximum(energy, floor))
    spectrum = np.fft.rfft(db - db.mean())
    rates = np.fft.rfftfreq(n, ENVELOPE_HOP_MS / 1000)
    band = (rates >= SYLLABLE_RATES_HZ[0]) & (rates <= SYLLABLE_RATES_HZ[1])
    # Parseval: the variance of the envelope's components in the band
    return float(np.sqrt(2 * (np.abs(spectrum[band]) ** 2).sum()) / n)


def trim_silence(wave: np.ndarray, settings: AudioSettings) -> np.ndarray:
    """The waveform without its silences: frames within ``padding_ms`` of speech are kept.

    So leading and trailing silence goes, pauses longer than twice the padding shrink to
    twice the padding, and the kept stretches are joined. :class:`Skip` if no frame is
    speech, or if what is kept lacks the syllabic modulation of speech (steady noise that
    webrtcvad takes for speech).
    """
    speech = speech_frames(wave, settings)
    if not speech.any():
        raise Skip(NO_SPEECH)
    pad = int(round(settings.padding_ms / settings.frame_ms))
    # dilate the speech frames by ``pad`` frames on each side
    dilated = np.convolve(speech.astype(np.int32), np.ones(2 * pad + 1, np.int32), "full")
    keep = dilated[pad:pad + len(speech)] > 0
    length = settings.sample_rate * settings.frame_ms // 1000
    mask = np.repeat(keep, length)
    # the partial frame at the end goes with the last whole frame
    mask = np.concatenate([mask, np.full(len(wave) - len(mask), keep[-1])])
    kept = wave[mask]
    modulation = syllabic_modulation_db(kept, settings.sample_rate)
    if modulation < settings.min_modulation_db:  # NaN (too short to tell) is not refused
        raise Skip(NO_SPEECH, f"webrtcvad marks {len(kept) / settings.sample_rate:.1f} s as "
                              f"speech, but its loudness varies by only {modulation:.2f} dB at "
                              f"syllable rates (2-8 Hz), where speech varies by "
                              f"{settings.min_modulation_db:g} dB or more: steady noise, not "
                              f"a voice")
    return kept


def prepare_utterance(path: str | Path, settings: AudioSettings = AudioSettings()) -> tuple[bytes, float]:
    """FLAC bytes of one utterance ready for a shard, and its duration in seconds."""
    wave, sr = read_audio(path)
    wave = resample(wave, sr, settings.sample_rate)
    if settings.vad:
        wave = trim_silence(wave, settings)
    seconds = len(wave) / settings.sample_rate
    if seconds < settings.min_seconds:
        raise Skip(TOO_SHORT, f"{seconds:.2f} s < {settings.min_seconds} s")
    return encode_flac(wave, settings.sample_rate), seconds
