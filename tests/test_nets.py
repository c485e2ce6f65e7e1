"""Every net: forward shape, no NaN, backward, every parameter gets a gradient (timm-style);
and the losses they train with."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from voice2face import losses
from voice2face.nets import (CosineClassifier, CovariateHeads, FaceCritic, FaceDecoder,
                             FaceEncoder, FaceGenerator, FaceTrunk, SpectrogramEncoder,
                             VoiceEmbedder, perturb_embedding)
from voice2face.nets.voice import normalize_mel

B = 3


def mel():
    return (torch.randn(B, 64, 40), torch.tensor([40, 31, 9]))


def spec():
    return (torch.randn(B, 2, 64, 20), torch.tensor([20, 13, 4]))


def face(size):
    return (torch.rand(B, 3, size, size) * 2 - 1,)


# name -> (net factory, inputs factory, expected output shapes)
NETS = {
    "voice_embedder": (lambda: VoiceEmbedder(width=0.1), mel, [(B, 64)]),
    "voice_embedder_paper": (lambda: VoiceEmbedder(), mel, [(B, 64)]),
    "voice_embedder_stats": (lambda: VoiceEmbedder(width=0.1, pooling="stats"), mel, [(B, 64)]),
    "voice_embedder_utterance_norm": (lambda: VoiceEmbedder(width=0.1, norm="utterance"), mel,
                                      [(B, 64)]),
    "face_trunk_64": (lambda: FaceTrunk(64, width=0.25), lambda: face(64), [(B, 64)]),
    "face_trunk_16_batchnorm": (lambda: FaceTrunk(16, norm="batch"), lambda: face(16), [(B, 64)]),
    "face_encoder": (lambda: FaceEncoder(32, 7, width=0.25), lambda: face(32),
                     [(B, 64), (B, 7), (B,)]),
    "face_generator_64": (lambda: FaceGenerator(64, 64, width=0.125),
                          lambda: (torch.randn(B, 64),), [(B, 3, 64, 64)]),
    "face_generator_16_no_norm": (lambda: FaceGenerator(64, 16, width=0.25, norm="none"),
                                  lambda: (torch.randn(B, 64),), [(B, 3, 16, 16)]),
    "face_generator_conditional": (lambda: FaceGenerator(64, 32, width=0.125, noise_dim=16),
                                   lambda: (torch.randn(B, 64),), [(B, 3, 32, 32)]),
    "face_critic": (lambda: FaceCritic(64, 11, width=0.125), lambda: face(64), [(B,), (B, 11)]),
    "face_critic_projection": (lambda: FaceCritic(32, 11, width=0.25, cond_dim=64),
                               lambda: (*face(32), torch.randn(B, 64)), [(B,), (B, 11)]),
    "face_critic_gender": (lambda: FaceCritic(32, 11, width=0.25, gender=True),
                           lambda: face(32), [(B,), (B, 11), (B,)]),
    "spectrogram_encoder": (lambda: SpectrogramEncoder(32, width=0.0625, freq_bins=64), spec,
                            [(B, 32)]),
    "face_decoder": (lambda: FaceDecoder(32, 16, width=0.125), lambda: (torch.randn(B, 32),),
                     [(B, 3, 16, 16)]),
    "cosine_classifier": (lambda: CosineClassifier(64, 9), lambda: (torch.randn(B, 64),), [(B, 9)]),
    "covariate_heads": (lambda: CovariateHeads(64, 9), lambda: (torch.randn(B, 64),),
                        [(B, 9), (B,)]),
}


def flat(out):
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


@pytest.mark.parametrize("name", sorted(NETS))
def test_forward_backward_every_parameter(name):
    make, inputs, shapes = NETS[name]
    torch.manual_seed(0)
    net = make().train()
    outs = flat(net(*inputs()))
    assert [tuple(o.shape) for o in outs] == shapes
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.float().square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    bad = [n for n, p in net.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradient for {bad}"


def numpy_normalize(mel: np.ndarray, lengths, norm: str) -> np.ndarray:
    """The reference: each utterance's valid frames normalised by a loop, padding left 0."""
    out = np.zeros_like(mel)
    for b, n in enumerate(lengths):
        x = mel[b, :, :n]
        axis = 1 if norm == "bin" else None
        mean = x.mean(axis=axis, keepdims=True)
        std = x.std(axis=axis, keepdims=True)
        out[b, :, :n] = (x - mean) / (std + 1e-5)
    return out


@pytest.mark.parametrize("norm", ["bin", "utterance"])
def test_normalize_mel_matches_a_loop(norm):
    torch.manual_seed(0)
    x = torch.randn(3, 8, 20, dtype=torch.float64) * 3 + 10 * torch.arange(8.0)[:, None]
    lengths = torch.tensor([20, 13, 4])
    got = normalize_mel(x, lengths, norm).numpy()
    np.testing.assert_allclose(got, numpy_normalize(x.numpy(), lengths.tolist(), norm),
                               rtol=1e-10, atol=1e-10)
    # the two differ: per-bin normalisation removes each bin's offset, the other keeps it
    bins = got[0].mean(axis=1)
    if norm == "bin":
        np.testing.assert_allclose(bins, 0, atol=1e-10)
    else:
        assert np.all(np.diff(bins) > 0)


@pytest.mark.parametrize("pooling,norm", [("mean", "bin"), ("stats", "bin"), ("mean", "utterance")])
def test_voice_embedding_ignores_padding_and_is_unit(pooling, norm):
    torch.manual_seed(0)
    net = VoiceEmbedder(width=0.1, pooling=pooling, norm=norm).eval()
    x = torch.randn(1, 64, 57)
    alone = net(x, torch.tensor([57]))
    padded = net(torch.cat([x, torch.randn(1, 64, 30) * 5], -1), torch.tensor([57]))
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-5)
    assert torch.allclose(alone.norm(dim=-1), torch.ones(1))


def test_stats_pooling_is_mean_and_std_over_valid_frames():
    torch.manual_seed(0)
    net = VoiceEmbedder(width=0.1, pooling="stats").eval()
    x = torch.randn(1, 64, 300)
    captured = {}
    net.stats.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
    net.features(x, torch.tensor([300]))
    plain = VoiceEmbedder(width=0.1).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items()
                           if not k.startswith("stats")})
    # the last layer's frames, recomputed without the pooling: 300 frames -> 10 after 5 strides
    h = torch.from_numpy(numpy_normalize(x.numpy(), [300], "bin"))
    for layer in (*plain.blocks, plain.out):
        h = layer(h)
    # (the variance is floored at 1e-6, so that its square root keeps a finite gradient)
    mean, std = h.mean(-1), h.var(-1, unbiased=False).clamp(min=1e-6).sqrt()
    torch.testing.assert_close(captured["in"], torch.cat([mean, std], -1), rtol=1e-4, atol=1e-4)


def test_generator_range_noise_and_voice():
    torch.manual_seed(0)
    gen = FaceGenerator(64, 16, width=0.25, noise_dim=8).eval()
    e = torch.randn(2, 64)
    a, b = gen(e), gen(e)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, b)  # z is drawn anew
    z = torch.randn(2, 8)
    assert torch.equal(gen(e, z), gen(e, z))
    # under the same z, another voice embedding gives another face
    assert (gen(e, z) - gen(e.flip(0), z)).abs().max() > 1e-3


def test_paper_sizes():
    """Table 2 of Wen et al.: the channel progressions at width 1."""
    voice = VoiceEmbedder()
    assert [b[0].out_channels for b in voice.blocks] + [voice.out.out_channels] == [256, 384, 576, 864, 64]
    gen = FaceGenerator(64, 64)
    convs = [m for m in gen.net if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Conv2d))]
    assert [c.out_channels for c in convs] == [1024, 512, 256, 128, 64, 3]
    trunk = FaceTrunk(64)
    assert [m.out_channels for m in trunk.net if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128, 256, 512, 64]
    with pytest.raises(ValueError, match="power of two"):
        FaceTrunk(48)


def test_perturb_embedding():
    e = torch.nn.functional.normalize(torch.randn(1000, 64), dim=-1)
    p = perturb_embedding(e, 0.05)
    assert torch.allclose(p.norm(dim=-1), torch.ones(1000))
    assert 0.9 < float((p * e).sum(-1).mean()) < 0.999
    assert perturb_embedding(e, 0.0) is e


# --- losses -------------------------------------------------------------------------------------

def test_adversarial_losses():
    zero = torch.zeros(4)
    assert math.isclose(float(losses.discriminator_loss(zero, zero)), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(losses.generator_loss(zero)), math.log(2), rel_tol=1e-6)
    # a discriminator that is right pays little; a fooled one pays much
    assert losses.discriminator_loss(torch.full((4,), 5.0), torch.full((4,), -5.0)) < 0.02
    assert losses.discriminator_loss(torch.full((4,), -5.0), torch.full((4,), 5.0)) > 9
    assert losses.generator_loss(torch.full((4,), 5.0)) < losses.generator_loss(zero)


def test_identity_loss_ignores_unlabelled():
    logits = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([1, -1, 3, -1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(losses.identity_loss(logits, labels), expected)
    none = losses.identity_loss(logits, torch.full((4,), -1))
    assert float(none.detach()) == 0.0 and none.requires_grad
    none.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_covariate_loss_and_accuracy():
    out = {"identity": torch.tensor([[9.0, 0.0], [0.0, 9.0]]), "gender": torch.tensor([9.0, -9.0])}
    good = losses.covariate_loss(out, torch.tensor([0, 1]), torch.tensor([1, 0]))
    bad = losses.covariate_loss(out, torch.tensor([1, 0]), torch.tensor([0, 1]))
    assert good < 0.01 < 10 < bad
    assert float(losses.top1_accuracy(out["identity"], torch.tensor([0, -1]))) == 1.0


# --- mixed precision, memory layout, and losses that never wait for the device ---------------

def test_identity_loss_gradient_as_before_and_no_read_back():
    """The masked mean without a branch: the value and gradient of the mean over the valid
    rows; on the meta device (no values to read) it still runs, so it reads nothing back."""
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([2, -1, 0, 3, -1])
    losses.identity_loss(logits, labels).backward()
    reference = logits.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(reference[labels >= 0], labels[labels >= 0]).backward()
    torch.testing.assert_close(logits.grad, reference.grad)
    assert float(losses.top1_accuracy(logits, torch.full((5,), -1))) == 0.0
    meta = torch.randn(5, 4, device="meta", requires_grad=True)
    for loss in (losses.identity_loss(meta, labels.to("meta")),
                 losses.top1_accuracy(meta, labels.to("meta"))):
        assert loss.device.type == "meta" and loss.shape == ()


@pytest.mark.parametrize("name", ["spectrogram_encoder", "voice_embedder_stats"])
def test_bf16_autocast_keeps_activations_bf16_and_masks_do_not_upcast(name):
    """Under bf16 autocast every convolution after the first takes a bf16 input: the fp32
    padding mask multiplied into the activations does not promote them to fp32. The pooled
    statistics are fp32 (a bf16 sum over frames loses its digits)."""
    make, inputs, shapes = NETS[name]
    torch.manual_seed(0)
    net = make().train()
    layers = [*net.blocks[1:], *([net.out] if hasattr(net, "out") else [net.fc])]
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
             for layer in layers]
    outputs = []
    hooks.append(net.blocks[0].register_forward_hook(
        lambda m, args, out: outputs.append(out.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(*inputs())
    for h in hooks:
        h.remove()
    assert outputs == [torch.bfloat16]
    # the fully connected head reads the fp32 time average; every convolution a bf16 input
    conv_inputs = seen if hasattr(net, "out") else seen[:-1]
    assert conv_inputs and all(d == torch.bfloat16 for d in conv_inputs), seen
    assert out.shape == shapes[0] and torch.isfinite(out.float()).all()


def gated_unet(gating: str, up_kernel: int = 2):
    from voice2face.nets import GatedUNet
    return GatedUNet(32, 16, width=0.125, gating=gating, up_kernel=up_kernel)


# the convolutional nets that channels-last applies to, on 4-D faces or spectrograms
LAYOUT_NETS = {
    "face_generator": (lambda: FaceGenerator(16, 32, width=0.125), lambda: (torch.randn(B, 16),)),
    "face_critic_projection": (lambda: FaceCritic(32, 11, width=0.25, cond_dim=16),
                               lambda: (*face(32), torch.randn(B, 16))),
    "face_encoder": (lambda: FaceEncoder(32, 7, width=0.25), lambda: face(32)),
    "face_decoder": (lambda: FaceDecoder(32, 16, width=0.125), lambda: (torch.randn(B, 32),)),
    "spectrogram_encoder": (lambda: SpectrogramEncoder(32, width=0.0625, freq_bins=64), spec),
    **{f"gated_unet_{g}": (lambda g=g: gated_unet(g), lambda: (*face(32), torch.randn(B, 16)))
       for g in ("full", "channel", "lowrank", "concat")},
    "gated_unet_full_up4": (lambda: gated_unet("full", 4),
                            lambda: (*face(32), torch.randn(B, 16))),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_NETS))
def test_channels_last_gives_the_outputs_of_contiguous_memory(name):
    """The same seeded net, in float64, with its 4-D weights and inputs NCHW or NHWC: the
    same outputs (only the order of summation may differ)."""
    from voice2face.nets import to_channels_last
    make, inputs = LAYOUT_NETS[name]
    torch.manual_seed(0)
    net = make().double().train()
    args = [x.double() for x in inputs()]
    expected = flat(net(*args))
    nhwc = net.to(memory_format=torch.channels_last)
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
               and not p.is_contiguous() for p in nhwc.parameters())
    got = flat(nhwc(*[to_channels_last(x) for x in args]))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


def test_faces_channels_last_keeps_each_image_nhwc():
    from voice2face.nets import faces_channels_last
    batch = {"face": torch.randn(2, 3, 8, 8), "faces": torch.randn(2, 4, 3, 8, 8),
             "mel": torch.randn(2, 64, 10), "key": ["a", "b"]}
    out = faces_channels_last(batch)
    assert out["face"].is_contiguous(memory_format=torch.channels_last)
    flat_faces = out["faces"].flatten(0, 1)
    assert flat_faces.is_contiguous(memory_format=torch.channels_last)
    assert flat_faces.data_ptr() == out["faces"].data_ptr()  # a view, not a copy
    assert torch.equal(out["faces"], batch["faces"]) and out["mel"] is batch["mel"]
