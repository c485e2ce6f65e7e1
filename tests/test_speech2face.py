"""Speech2Face pieces (Oh et al., CVPR 2019): the compressed complex spectrogram, the voice
encoder on it, the face decoder and the feature losses, each against a slow obvious reference.
(The generic forward / backward / every-parameter checks are in test_nets.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datamodules.features import (HOP_LENGTH, N_FFT, WIN_LENGTH, AudioFeatures,
                                  compress_spectrogram)
from voice2face import losses
from voice2face.nets import FaceDecoder, SpectrogramEncoder

# --- the compressed complex spectrogram --------------------------------------------------------

def reference_stft(wave: np.ndarray) -> np.ndarray:
    """The STFT by its definition, frame by frame: a periodic Hann window of WIN_LENGTH centred
    in N_FFT samples, frames every HOP_LENGTH with no centring, bins 0..N_FFT/2."""
    n = np.arange(WIN_LENGTH)
    window = np.zeros(N_FFT)
    left = (N_FFT - WIN_LENGTH) // 2
    window[left:left + WIN_LENGTH] = 0.5 - 0.5 * np.cos(2 * np.pi * n / WIN_LENGTH)
    frames = 1 + (len(wave) - N_FFT) // HOP_LENGTH
    k = np.arange(N_FFT // 2 + 1)[:, None]
    basis = np.exp(-2j * np.pi * k * np.arange(N_FFT)[None, :] / N_FFT)
    out = np.zeros((N_FFT // 2 + 1, frames), dtype=np.complex128)
    for t in range(frames):
        out[:, t] = basis @ (wave[t * HOP_LENGTH:t * HOP_LENGTH + N_FFT] * window)
    return out


def test_complex_spectrogram_matches_the_definition():
    wave = np.random.default_rng(0).standard_normal(2400)
    spec = AudioFeatures(spectrogram=True)(torch.from_numpy(wave).float())["spec"]
    ref = reference_stft(wave)
    assert spec.shape == ref.shape == (257, 1 + (2400 - N_FFT) // HOP_LENGTH)
    np.testing.assert_allclose(spec.numpy(), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_compression_elementwise():
    spec = torch.randn(3, 5, 7, dtype=torch.complex64)
    spec[0, 0, 0] = 0  # zero stays zero (padding may be compressed or not)
    spec[0, 0, 1] = complex(-2.0, 0.5)
    out = compress_spectrogram(spec)
    assert out.shape == (3, 2, 5, 7) and out.dtype == torch.float32
    ref = np.zeros(out.shape)
    for b, f, t in np.ndindex(3, 5, 7):
        z = complex(spec[b, f, t])
        for c, part in enumerate((z.real, z.imag)):
            ref[b, c, f, t] = math.copysign(abs(part) ** 0.3, part) if part else 0.0
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert out[0, 0, 0, 1] == pytest.approx(-(2.0 ** 0.3))
    assert out[0, 1, 0, 1] == pytest.approx(0.5 ** 0.3)
    np.testing.assert_allclose(compress_spectrogram(spec, 1.0).numpy(),
                               torch.stack([spec.real, spec.imag], 1).numpy())
    with pytest.raises(TypeError, match="complex"):
        compress_spectrogram(spec.real)


# --- the voice encoder -------------------------------------------------------------------------

def small_encoder(**kw):
    return SpectrogramEncoder(16, width=0.0625, freq_bins=64, **kw)


def calibrated(net, x):
    """``net`` in eval mode with batch norm's running statistics those of ``x``: a fresh net's
    unit running variance shrinks the signal ~100x over nine blocks, which would let the
    comparisons below pass on almost constant outputs."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        net.train()(x)
    return net.eval()


def test_encoder_ignores_padding():
    # in float64: inputs of other widths and batch sizes may take other convolution kernels,
    # whose float32 rounding differs across processors by more than a tight tolerance
    torch.manual_seed(0)
    x = torch.randn(1, 2, 64, 23, dtype=torch.float64)
    net = calibrated(small_encoder().double(), torch.randn(4, 2, 64, 23, dtype=torch.float64))
    alone = net(x, torch.tensor([23]))
    noise = torch.randn(1, 2, 64, 15, dtype=torch.float64) * 5
    padded = net(torch.cat([x, noise], -1), torch.tensor([23]))
    torch.testing.assert_close(alone, padded, rtol=1e-10, atol=1e-12)
    # the padding does reach the output when the lengths do not say where it starts
    assert (alone - net(torch.cat([x, noise], -1))).abs().max() > 1e-3
    assert (alone - net(torch.randn(1, 2, 64, 23, dtype=torch.float64))).abs().max() > 1e-3
    # a padded batch: every utterance as alone
    y = torch.randn(1, 2, 64, 9, dtype=torch.float64)
    batch = torch.zeros(2, 2, 64, 23, dtype=torch.float64)
    batch[0], batch[1, ..., :9] = x[0], y[0]
    out = net(batch, torch.tensor([23, 9]))
    torch.testing.assert_close(out, torch.cat([alone, net(y)]), rtol=1e-10, atol=1e-12)


def test_encoder_keeps_time_and_pools_frequency():
    """Every convolution keeps the frame count; the 2x1 pools halve only the frequency axis."""
    net = small_encoder().eval()
    shapes = []
    for block in net.blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[2:])))
    net(torch.randn(1, 2, 64, 11))
    assert shapes == [(64, 11), (64, 11), (32, 11), (16, 11), (8, 11), (4, 11), (2, 11),
                      (2, 11), (2, 11)]
    with pytest.raises(ValueError, match="halved"):
        SpectrogramEncoder(16, width=0.0625, freq_bins=16)


def test_time_pools_halve_the_frames_and_still_ignore_padding():
    """A block in ``time_pools`` halves time as well (an odd count rounded up), and the encoder
    still gives an utterance the same feature alone or in a padded batch, odd lengths
    included; the result is a max over frame pairs, checked against a loop."""
    net = small_encoder(time_pools=(0, 2)).eval()
    shapes = []
    for block in net.blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[2:])))
    net(torch.randn(1, 2, 64, 11))
    # block outputs, before each block's own pool: 11 frames -> 6 after block 0 (which
    # pools no frequency) -> 3 after block 2 (which pools both)
    assert shapes == [(64, 11), (64, 6), (32, 6), (16, 3), (8, 3), (4, 3), (2, 3), (2, 3),
                      (2, 3)]
    assert net.config["time_pools"] == [0, 2]
    with pytest.raises(ValueError, match="time_pools"):
        small_encoder(time_pools=(9,))

    torch.manual_seed(0)
    net = calibrated(small_encoder(time_pools=(0, 1, 2)).double(),
                     torch.randn(4, 2, 64, 23, dtype=torch.float64))
    x = torch.randn(1, 2, 64, 23, dtype=torch.float64)
    alone = net(x, torch.tensor([23]))
    noise = torch.randn(1, 2, 64, 10, dtype=torch.float64) * 5
    torch.testing.assert_close(net(torch.cat([x, noise], -1), torch.tensor([23])), alone,
                               rtol=1e-10, atol=1e-12)
    y = torch.randn(1, 2, 64, 9, dtype=torch.float64)
    batch = torch.zeros(2, 2, 64, 23, dtype=torch.float64)
    batch[0], batch[1, ..., :9] = x[0], y[0]
    torch.testing.assert_close(net(batch, torch.tensor([23, 9])), torch.cat([alone, net(y)]),
                               rtol=1e-10, atol=1e-12)

    # block 0's pool, by a loop: frame j is the max of frames 2j and 2j + 1 (the last one
    # alone when the count is odd), every bin kept
    pooled = []
    net.blocks[0].register_forward_hook(lambda m, i, o: pooled.append(o))
    net.blocks[1].register_forward_pre_hook(lambda m, i: pooled.append(i[0]))
    with torch.no_grad():
        net(y)
    before, after = pooled[-2], pooled[-1]
    assert after.shape[-1] == 5
    for j in range(5):
        torch.testing.assert_close(after[..., j], before[..., 2 * j:2 * j + 2].amax(-1))


def test_encoder_paper_size():
    """At width 1: the table's channels, 4096-d hidden and output layers, about 45 M
    parameters (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        net = SpectrogramEncoder(4096)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128, 256, 512, 512, 512]
    assert all(c.kernel_size == (4, 4) and c.stride == (1, 1) for c in convs)
    assert [m.in_features for m in net.fc if isinstance(m, torch.nn.Linear)] == [512 * 8, 4096]
    assert 45e6 < sum(p.numel() for p in net.parameters()) < 46e6
    # the config rebuilds the same net
    with torch.device("meta"):
        again = SpectrogramEncoder(**net.config)
    assert [p.shape for p in again.parameters()] == [p.shape for p in net.parameters()]


# --- the face decoder --------------------------------------------------------------------------

def test_decoder_range_and_scale_invariance():
    torch.manual_seed(0)
    dec = FaceDecoder(32, 16, width=0.125).eval()
    f = torch.randn(4, 32)
    face = dec(f)
    assert face.shape == (4, 3, 16, 16) and face.min() >= -1 and face.max() <= 1
    torch.testing.assert_close(dec(f * 7.0), face)
    assert not torch.allclose(dec(torch.randn(4, 32)), face, atol=1e-3)


# --- the feature losses ------------------------------------------------------------------------

def unit_rows(x: np.ndarray) -> np.ndarray:
    return np.stack([row / math.sqrt(sum(v * v for v in row)) for row in x])


def reference_info_nce(pred, target, temperature, labels=None):
    p, t = unit_rows(pred), unit_rows(target)
    total = 0.0
    for i in range(len(p)):
        terms = [float(p[i] @ t[j]) / temperature for j in range(len(t))
                 if j == i or labels is None or labels[j] != labels[i]]
        own = float(p[i] @ t[i]) / temperature
        total += -own + math.log(sum(math.exp(s) for s in terms))
    return total / len(p)


@pytest.fixture
def features():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 10, generator=g, dtype=torch.float64), \
        torch.randn(6, 10, generator=g, dtype=torch.float64)


def test_regression_losses_against_loops(features):
    pred, target = features
    p, t = unit_rows(pred.numpy()), unit_rows(target.numpy())
    l1 = np.mean([sum(abs(a - b) for a, b in zip(p[i], t[i])) for i in range(len(p))])
    l2 = np.mean([sum((a - b) ** 2 for a, b in zip(p[i], t[i])) for i in range(len(p))])
    assert float(losses.feature_l1_loss(pred, target)) == pytest.approx(l1, rel=1e-10)
    assert float(losses.feature_l2_loss(pred, target)) == pytest.approx(l2, rel=1e-10)
    assert float(losses.feature_l1_l2_loss(pred, target)) == pytest.approx(l1 + 10 * l2, rel=1e-10)
    assert float(losses.feature_l1_l2_loss(pred, target, l2_weight=0.5)) == \
        pytest.approx(l1 + 0.5 * l2, rel=1e-10)
    # squared distance of unit vectors: 2 - 2 cos
    cos = torch.nn.functional.cosine_similarity(pred, target).numpy()
    assert l2 == pytest.approx(np.mean(2 - 2 * cos), rel=1e-10)


def test_info_nce_against_loop(features):
    pred, target = features
    for tau in (0.1, 1.0):
        assert float(losses.info_nce_loss(pred, target, tau)) == pytest.approx(
            reference_info_nce(pred.numpy(), target.numpy(), tau), rel=1e-9)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    assert float(losses.info_nce_loss(pred, target, 0.2, labels)) == pytest.approx(
        reference_info_nce(pred.numpy(), target.numpy(), 0.2, labels.tolist()), rel=1e-9)
    # distinct identities: the labels change nothing
    torch.testing.assert_close(losses.info_nce_loss(pred, target, 0.2, torch.arange(6)),
                               losses.info_nce_loss(pred, target, 0.2))


def test_info_nce_limits():
    torch.manual_seed(0)
    b = 16
    target = torch.randn(b, 32)
    # uninformative: predictions as similar to every face (here orthogonal to all) cost log B
    faces = torch.cat([torch.randn(b, 16), torch.zeros(b, 16)], 1)
    voices = torch.cat([torch.zeros(b, 16), torch.randn(b, 16)], 1)
    assert float(losses.info_nce_loss(voices, faces)) == pytest.approx(math.log(b), rel=1e-6)
    # and so, nearly, do random ones at a high temperature
    assert float(losses.info_nce_loss(torch.randn(b, 32), target, 10.0)) == \
        pytest.approx(math.log(b), rel=0.01)
    # perfectly matched, distinct (orthonormal) features: almost no loss
    basis = torch.linalg.qr(torch.randn(32, 32))[0][:b]
    assert float(losses.info_nce_loss(basis * 3.0, basis, temperature=0.05)) < 1e-6
    # wrongly matched: much more than chance
    assert float(losses.info_nce_loss(basis.roll(1, 0), basis, 0.05)) > 19  # ~ 1 / 0.05


@pytest.mark.parametrize("name", sorted(losses.FEATURE_LOSSES))
def test_feature_losses_scale_free_and_zero_on_match(name, features):
    loss = losses.get_feature_loss(name)
    pred, target = features
    scale = torch.rand(6, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(loss(pred * scale, target), loss(pred, target))
    torch.testing.assert_close(loss(pred, target * scale), loss(pred, target))
    if name != "infonce":  # InfoNCE's floor depends on the negatives (see test_info_nce_limits)
        assert float(loss(target * scale, target)) == pytest.approx(0.0, abs=1e-12)
        assert float(loss(pred, target)) > 0.1
    leaf = pred.clone().requires_grad_(True)
    loss(leaf, target).backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_feature_loss_registry():
    assert set(losses.FEATURE_LOSSES) == {"l1", "l2", "l1_l2", "infonce"}
    assert losses.get_feature_loss("l1") is losses.feature_l1_loss
    with pytest.raises(KeyError, match="l1, l2, l1_l2, infonce"):
        losses.get_feature_loss("cosine")
