"""One utterance from a VoxCeleb file to the FLAC a shard stores.

decode (WAV, FLAC, OGG and, where libsndfile reads it, MP3 with soundfile; VoxCeleb2's AAC
``.m4a`` and anything else FFmpeg reads with PyAV) -> downmix ->
resample to 16 kHz -> trim silence with WebRTC's voice activity detector -> minimum length
-> 16-bit FLAC. Wen et al. (NeurIPS 2019) trimmed VoxCeleb's silences with webrtcvad at
aggressiveness 2 on 20 ms frames; those are the defaults.

Every failure of a single file is a :class:`Skip` with its reason, never a crash.
``voice2face generate`` reads its recordings with the same ``read_audio``, ``resample`` and
``trim_silence``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import webrtcvad

from datamodules.shards import SAMPLE_RATE, encode_flac

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

    def __post_init__(self):
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError("VAD aggressiveness must be 0, 1, 2 or 3")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("VAD frames must be 10, 20 or 30 ms")
        if self.padding_ms < 0 or self.min_seconds < 0:
            raise ValueError("VAD padding and the minimum duration must be >= 0")
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
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return wave.mean(axis=1), int(sr)


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


def trim_silence(wave: np.ndarray, settings: AudioSettings) -> np.ndarray:
    """The waveform without its silences: frames within ``padding_ms`` of speech are kept.

    So leading and trailing silence goes, pauses longer than twice the padding shrink to
    twice the padding, and the kept stretches are joined. :class:`Skip` if no frame is speech.
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
    return wave[mask]


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
