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

Where they are computed is a data setting (``VoiceFaceDataModule(features=...)``): on the
loader workers, per sample, or on the accelerator from a batch of waveform crops
(``device_features``, called in the LightningModule's ``on_after_batch_transfer``). Both give
the same features (docs/data.md: "Where the features are computed").
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from voice2face.constants import SAMPLE_RATE

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

    def to(self, device: torch.device | str) -> "AudioFeatures":
        self.mel = self.mel.to(device)
        self.stft = self.stft.to(device) if self.stft is not None else None
        return self

    def __call__(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., L]`` samples -> ``mel`` ``[..., n_mels, T]`` (and ``spec`` ``[..., 257, T]``)."""
        if wave.shape[-1] < N_FFT:  # too short for one frame: pad with silence
            wave = torch.nn.functional.pad(wave, (0, N_FFT - wave.shape[-1]))
        out = {"mel": torch.log(self.mel(wave) + 1e-6)}
        if self.stft is not None:
            out["spec"] = self.stft(wave)
        return out


_ON_DEVICE: dict[tuple, AudioFeatures] = {}


def device_features(batch: dict, spectrogram: bool = False,
                    sample_rate: int = SAMPLE_RATE) -> dict:
    """A batch of waveforms (``wave`` ``[B, L]``, ``wave_lengths`` ``[B]``, from
    ``VoiceFaceDataModule(features="device")``) -> the same batch with ``mel``,
    ``mel_lengths`` (and ``spec`` with ``spectrogram``) instead, computed where the batch is.

    Call it in the LightningModule's ``on_after_batch_transfer``. Features are computed in
    fp32 whatever the precision, and frames past an utterance's end are zero, as the worker
    path pads them; a batch without ``wave`` (worker features, evaluation) is returned as is.
    """
    if "wave" not in batch:
        return batch
    wave, lengths = batch["wave"], batch["wave_lengths"]
    key = (str(wave.device), spectrogram, sample_rate)
    if key not in _ON_DEVICE:  # the window and the mel filterbank, built once per device
        _ON_DEVICE[key] = AudioFeatures(spectrogram=spectrogram,
                                        sample_rate=sample_rate).to(wave.device)
    with torch.no_grad(), torch.autocast(wave.device.type, enabled=False):
        feats = _ON_DEVICE[key](wave.float())
    # a clip shorter than one window still has a frame (the worker pads it with silence)
    frames = (lengths - N_FFT).div(HOP_LENGTH, rounding_mode="floor").add(1).clamp(min=1)
    pad = torch.arange(feats["mel"].shape[-1], device=wave.device) >= frames[:, None]
    out = {k: v for k, v in batch.items() if k not in ("wave", "wave_lengths")}
    out["mel_lengths"] = frames.long()
    for name, x in feats.items():
        out[name] = x.masked_fill(pad[:, None, :], 0)
    return out


def crop_start(num_samples: int, length: int, rng: np.random.Generator) -> int:
    """Where a random ``length``-sample window of a clip starts; 0, drawing nothing, when the
    clip is not longer (it is tiled instead)."""
    return int(rng.integers(0, num_samples - length + 1)) if num_samples > length else 0


def random_crop(wave: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of ``length`` samples; shorter clips are tiled to the length."""
    if len(wave) <= length:
        reps = -(-length // max(len(wave), 1))
        return np.tile(wave, reps)[:length]
    start = crop_start(len(wave), length, rng)
    return wave[start:start + length]


def face_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [-1, 1]."""
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_face(face: torch.Tensor) -> np.ndarray:
    """3xHxW float in [-1, 1] -> HxWx3 uint8 (the inverse of face_to_tensor)."""
    arr = face.detach().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0)
    return arr.cpu().numpy()
