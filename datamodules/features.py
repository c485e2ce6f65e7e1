"""Audio and image features shared by every method.

Log-mel features follow Wen et al. (NeurIPS 2019): 64 mel bins, 25 ms windows, 10 ms hops.
They leave here unnormalised: the voice nets normalise them themselves
(``voice2face.nets.voice.normalize_mel``), so that how a net was trained to see a voice
(Wen et al.'s per-bin normalisation, or one that keeps the spectral envelope) is part of
the net and its checkpoint, never a data setting that a later method could set otherwise.

The complex STFT (``spectrogram=True``) uses the same windows and hops, so its frames line up
with the log-mel ones (and share ``mel_lengths`` in a batch). Speech2Face (Oh et al., CVPR
2019, Sec. 3) feeds its voice encoder the real and imaginary parts, power-law compressed;
``compress_spectrogram`` makes that input from the complex STFT.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

SAMPLE_RATE = 16_000
WIN_LENGTH = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
N_MELS = 64
SPEC_EXPONENT = 0.3  # Speech2Face's power-law compression


def compress_spectrogram(spec: torch.Tensor, exponent: float = SPEC_EXPONENT) -> torch.Tensor:
    """Complex STFT ``[..., F, T]`` -> real ``[..., 2, F, T]``: ``sign(x) |x|^exponent`` of the
    real and of the imaginary part (Speech2Face, Oh et al. CVPR 2019, Sec. 3).

    Zero maps to zero, so zero-padding a batch before or after compressing is the same; run it
    on the batch (on the accelerator) rather than per sample.
    """
    if not spec.is_complex():
        raise TypeError(f"expected a complex spectrogram, got {spec.dtype}")
    parts = torch.stack([spec.real, spec.imag], dim=-3)
    return parts.sign() * parts.abs().pow(exponent)


class AudioFeatures:
    """Waveform -> log-mel ``[n_mels, T]`` and, on request, the complex STFT."""

    def __init__(self, n_mels: int = N_MELS, spectrogram: bool = False,
                 sample_rate: int = SAMPLE_RATE):
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH,
            n_mels=n_mels, center=False)
        self.stft = (torchaudio.transforms.Spectrogram(
            n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH, power=None, center=False)
            if spectrogram else None)

    @staticmethod
    def num_frames(num_samples: int) -> int:
        # center=False: a frame needs a whole n_fft window (the 25 ms window sits inside it)
        return max(0, 1 + (num_samples - N_FFT) // HOP_LENGTH)

    def __call__(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        if wave.numel() < N_FFT:  # too short for one frame: pad with silence
            wave = torch.nn.functional.pad(wave, (0, N_FFT - wave.numel()))
        out = {"mel": torch.log(self.mel(wave) + 1e-6)}
        if self.stft is not None:
            out["spec"] = self.stft(wave)
        return out


def random_crop(wave: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of ``length`` samples; shorter clips are tiled to the length."""
    if len(wave) <= length:
        reps = -(-length // max(len(wave), 1))
        return np.tile(wave, reps)[:length]
    start = int(rng.integers(0, len(wave) - length + 1))
    return wave[start:start + length]


def face_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [-1, 1]."""
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_face(face: torch.Tensor) -> np.ndarray:
    """3xHxW float in [-1, 1] -> HxWx3 uint8 (the inverse of face_to_tensor)."""
    arr = face.detach().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0)
    return arr.cpu().numpy()
