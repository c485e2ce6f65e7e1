"""The Controlled AutoEncoder's nets (Liang et al.): the batched per-sample gated decoder against
the slow obvious reference (a loop over samples, each through its own gated weights with a plain
``F.conv_transpose2d``), in outputs and gradients; shapes, gradients, gates, sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from voice2face.nets import CAECritic, GatedConvTranspose2d, GatedUNet
from voice2face.nets.cae import batched_conv_transpose2d, unet_channels

GATED = ("full", "channel", "lowrank")
# float32 tolerances: the grouped and the per-sample convolutions sum in different orders
TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These nets are tiny: a second OpenMP thread buys nothing, and on a busy machine its
    barrier waits made this file ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_gate(layer: GatedConvTranspose2d, cond: torch.Tensor) -> torch.Tensor:
    """One sample's gate ``[C_in, C_out, k, k]``, written out from the controller's parameters."""
    c_in, c_out, k, r = layer.in_channels, layer.out_channels, layer.kernel_size, layer.rank
    logits = layer.controller.weight @ cond + layer.controller.bias
    if layer.granularity == "full":
        return torch.sigmoid(logits).reshape(c_in, c_out, k, k)
    if layer.granularity == "channel":
        return torch.sigmoid(logits).reshape(1, c_out, 1, 1).expand(c_in, c_out, k, k)
    u, v = logits[:c_in * r].reshape(c_in, r), logits[c_in * r:].reshape(r, c_out * k * k)
    shared = layer.shared_logits.reshape(c_in, c_out * k * k)
    return torch.sigmoid(shared + u @ v / math.sqrt(r)).reshape(c_in, c_out, k, k)


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", [2, 4])
@pytest.mark.parametrize("granularity", GATED)
def test_gated_layer_batched_equals_per_sample_loop(granularity, kernel, dtype):
    torch.manual_seed(0)
    layer = GatedConvTranspose2d(5, 4, kernel, 2, (kernel - 2) // 2, cond_dim=6,
                                 granularity=granularity, rank=2).to(dtype)
    x = torch.randn(3, 5, 4, 4, dtype=dtype, requires_grad=True)
    cond = torch.randn(3, 6, dtype=dtype, requires_grad=True)
    leaves = [x, cond, layer.weight, layer.bias, layer.controller.weight, layer.controller.bias]
    names = ["input", "cond", "weight", "bias", "controller.weight", "controller.bias"]
    if layer.shared_logits is not None:  # zero at first: made random, so that it counts
        with torch.no_grad():
            layer.shared_logits.normal_()
        leaves.append(layer.shared_logits)
        names.append("shared_logits")
    out = layer(x, cond)
    assert out.shape == (3, 4, 8, 8)
    probe = torch.randn_like(out)  # a loss whose gradient differs per element
    batched = grads((out * probe).sum(), leaves)

    ref = torch.cat([F.conv_transpose2d(x[i:i + 1], layer.weight * reference_gate(layer, cond[i]),
                                        layer.bias, 2, (kernel - 2) // 2) for i in range(3)])
    looped = grads((ref * probe).sum(), leaves)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    for name, a, b in zip(names, batched, looped, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, n=name: f"{n}: {m}")
    # the module's own loop path is the same reference
    layer.impl = "loop"
    torch.testing.assert_close(layer(x, cond), ref, **TOL[dtype])


@pytest.mark.parametrize("kernel,padding", [(2, 0), (4, 1), (3, 0)])
def test_batched_conv_transpose_is_per_sample(kernel, padding):
    """Both paths (bmm for kernel == stride, grouped otherwise) against plain per-sample calls;
    and sample b's output depends on sample b's weights only."""
    torch.manual_seed(0)
    x, w, bias = torch.randn(3, 3, 5, 5), torch.randn(3, 3, 4, kernel, kernel), torch.randn(4)
    out = batched_conv_transpose2d(x, w, bias, 2, padding)
    ref = torch.cat([F.conv_transpose2d(x[i:i + 1], w[i], bias, 2, padding) for i in range(3)])
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    w2 = w.clone()
    w2[1] += 1
    out2 = batched_conv_transpose2d(x, w2, bias, 2, padding)
    torch.testing.assert_close(out[[0, 2]], out2[[0, 2]])
    assert not torch.allclose(out[1], out2[1])


def unet_inputs(b=3, size=16, seed=1, dtype=torch.float32, cond_dim=64):
    g = torch.Generator().manual_seed(seed)
    face = (torch.rand(b, 3, size, size, generator=g, dtype=dtype) * 2 - 1).requires_grad_()
    voice = F.normalize(torch.randn(b, cond_dim, generator=g, dtype=dtype), dim=-1).requires_grad_()
    return face, voice


def small_net(gating, **kwargs):
    """8-8-16-32 channels on 16x16 faces, 16-d voices: the equality tests' size (the full
    controller's gradient is what costs there)."""
    return GatedUNet(16, cond_dim=16, width=0.0625, gating=gating, rank=2, **kwargs).double()


def compare_nets(net, batched_fn, reference_fn, face, voice):
    params = [p for p in net.parameters()]
    leaves = [face, voice, *params]
    out = batched_fn()
    probe = torch.randn_like(out)
    g_batched = grads((out * probe).sum(), leaves)
    ref = reference_fn()
    g_ref = grads((ref * probe).sum(), leaves)
    tol = TOL[out.dtype]
    torch.testing.assert_close(out, ref, **tol)
    names = ["face", "voice", *(n for n, _ in net.named_parameters())]
    for name, a, b in zip(names, g_batched, g_ref):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("granularity", GATED)
def test_unet_batched_equals_each_sample_alone(granularity):
    """Eval mode (BatchNorm on running statistics, so samples are independent): the batch in one
    call against each sample run alone through the net with its own gated weights (the loop).
    In float64, so that a tight tolerance separates a wrong gradient from rounding: in float32
    the deepest parameter gradients (sums over every pixel) differ by ~1e-3 relative."""
    torch.manual_seed(0)
    net = small_net(granularity)
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(2):
            net(*unet_inputs(4, seed=7, dtype=torch.float64, cond_dim=16))
    net.eval()
    face, voice = unet_inputs(dtype=torch.float64, cond_dim=16)

    def loop():
        net.set_impl("loop")
        out = torch.cat([net(face[i:i + 1], voice[i:i + 1]) for i in range(face.shape[0])])
        net.set_impl("batched")
        return out

    compare_nets(net, lambda: net(face, voice), loop, face, voice)


@pytest.mark.parametrize("granularity", GATED)
def test_unet_train_mode_batched_equals_loop(granularity):
    """Train mode: BatchNorm over the batch in both; only the gated convolutions differ (4x4
    kernels here, so the per-sample filters overlap). float64, as above."""
    torch.manual_seed(0)
    net = small_net(granularity, up_kernel=4).train()
    face, voice = unet_inputs(dtype=torch.float64, cond_dim=16)

    def loop():
        out = net.set_impl("loop")(face, voice)
        net.set_impl("batched")
        return out

    compare_nets(net, lambda: net(face, voice), loop, face, voice)


NETS = {
    **{f"unet_{g}": (lambda g=g: GatedUNet(32, width=0.125, gating=g, rank=2), (3, 3, 32, 32))
       for g in GATED + ("concat",)},
    "unet_64_full_kernel4": (lambda: GatedUNet(64, width=0.0625, up_kernel=4), (3, 3, 64, 64)),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_unet_forward_backward_every_parameter(name):
    make, shape = NETS[name]
    torch.manual_seed(0)
    net = make().train()
    face, voice = unet_inputs(shape[0], shape[-1])
    out = net(face, voice)
    assert out.shape == shape
    assert torch.isfinite(out).all() and out.abs().max() <= 1
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in net.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    assert voice.grad.abs().sum() > 0  # the voice steers the output


@pytest.mark.parametrize("gating", GATED + ("concat",))
def test_gates_in_unit_interval_and_voice_changes_face(gating):
    torch.manual_seed(0)
    # train mode: BatchNorm on batch statistics (fresh running statistics would shrink every
    # activation towards zero); the batch repeats one face, so only the voices differ
    net = GatedUNet(16, width=0.125, gating=gating, rank=2).train()
    face, voice = unet_inputs(4)
    gates = net.gates(voice)
    assert len(gates) == (0 if gating == "concat" else 4)
    for g in gates:
        assert ((g > 0) & (g < 1)).all()
        assert not torch.allclose(g[0], g[1])  # per-sample gates
    with torch.no_grad():
        out = net(face[:1].expand(4, -1, -1, -1), voice)
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_paper_sizes_and_controller_size():
    """Width 1 (built on the meta device: shapes without memory): 64-128-256-512 levels; the
    full controller has (64 + 1) parameters per decoder filter parameter, the channel one
    (64 + 1) per output channel, the low-rank one (64 + 1) r (C_in + C_out k k) per layer and
    the C_in C_out k k logits its samples share."""
    assert unet_channels(1.0) == [64, 128, 256, 512]
    with torch.device("meta"):
        full = GatedUNet(64, width=1.0, gating="full")
        channel = GatedUNet(64, width=1.0, gating="channel")
        lowrank = GatedUNet(64, width=1.0, gating="lowrank", rank=3)
    shapes = [(512, 512, 2, 2), (512, 256, 2, 2), (256, 128, 2, 2), (128, 64, 2, 2)]
    for net in (full, channel, lowrank):
        assert [tuple(m.weight.shape) for m in net.up] == shapes
    decoder = sum(math.prod(s) for s in shapes)
    assert decoder == 1_736_704

    def controller(net):
        return sum(p.numel() for m in net.up for p in m.controller.parameters())

    assert controller(full) == 65 * decoder  # 112.9M: the paper's gating is most of the model
    assert controller(channel) == 65 * (512 + 256 + 128 + 64)
    assert controller(lowrank) == 65 * 3 * sum(s[0] + s[1] * 4 for s in shapes)
    assert sum(m.shared_logits.numel() for m in lowrank.up) == decoder
    assert all(m.shared_logits is None for m in (*full.up, *channel.up))


def test_lowrank_factors_start_at_scales_that_let_the_voice_move_the_gates():
    """The low-rank gates start where the full ones do (the shared logits at zero, the voice's
    part small), with the right factor of unit scale on unit voice embeddings: the left one's
    gradient is then not scaled down by a second small factor."""
    torch.manual_seed(0)
    layer = GatedConvTranspose2d(64, 32, 2, 2, cond_dim=64, granularity="lowrank", rank=4)
    voice = F.normalize(torch.randn(256, 64), dim=-1)
    factors = layer.controller(voice)
    left, right = factors[:, :64 * 4], factors[:, 64 * 4:]
    assert 0.8 < right.std().item() < 1.25
    assert left.std().item() < 0.2  # nn.Linear's own scale
    assert torch.equal(layer.shared_logits, torch.zeros(64, 32 * 4))
    logits = torch.logit(layer.gates(voice))
    assert logits.std().item() < 0.5 and logits.std(dim=0).mean().item() > 0.02


def test_concat_ablation_has_no_gates_and_wider_bottleneck():
    net = GatedUNet(16, width=0.125, gating="concat")
    assert not any(isinstance(m, GatedConvTranspose2d) for m in net.modules())
    assert net.bottleneck[0].in_channels == net.channels[-1] + 64


def test_critic_shared_trunk():
    torch.manual_seed(0)
    critic = CAECritic(32, num_classes=7, width=0.25)
    face, _ = unet_inputs(3, 32)
    out = critic(face)
    assert out["adversarial"].shape == (3,) and out["identity"].shape == (3, 7)
    sum(o.square().mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in critic.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="gating"):
        GatedUNet(16, gating="film")
    with pytest.raises(ValueError, match="divisible"):
        GatedUNet(24)
    with pytest.raises(ValueError, match="impl"):
        GatedUNet(16, width=0.125).set_impl("vmap")
