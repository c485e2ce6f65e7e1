"""Training throughput of the Controlled AutoEncoder's generator (Liang et al.): the batched
per-sample gated decoder against the per-sample loop.

    python benchmarks/cae.py [--width 0.125] [--gating full] [--face-size 64]
                             [--batch-sizes 1 8 32 64] [--samples 128] [--threads N]

One training step is the generator part of the paper's Algorithm 1 on random tensors: a proposal
face f_A, a target face f_B, voice embeddings e_A, e_B, and
``L1(G(f_A, e_B), f_A) + 10 L1(G(f_A, e_B), f_B) + 10 L1(G(G(f_A, e_B), e_A), f_A)``,
backward, one Adam step. Each batch size is timed over the same number of samples
(``--samples``, after one warm-up step):

- ``batched``: the gated transposed convolutions as one grouped call over the batch;
- ``loop``: the same steps with the gated convolutions run one sample at a time, each through
  its own gated weights (``impl="loop"``); at batch 1 this is the paper's way of training.

``--width 1`` is the paper's size (the ``full`` controller then has about 113M parameters).
``--threads`` defaults to torch's default; on a busy machine prefer a fixed small number. The
load average is printed with the table, since other jobs change the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from voice2face.nets import GatedUNet  # noqa: E402
from voice2face.nets.cae import GATINGS  # noqa: E402


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def samples_per_second(net: GatedUNet, opt: torch.optim.Optimizer, batch: int, samples: int,
                       face_size: int) -> tuple[float, float]:
    """Samples per second of wall time and per second of this process's CPU time."""
    g = torch.Generator().manual_seed(0)

    def step():
        f_a, f_b = (torch.rand(2, batch, 3, face_size, face_size, generator=g) * 2 - 1)
        e_a, e_b = F.normalize(torch.randn(2, batch, net.cond_dim, generator=g), dim=-1)
        fake = net(f_a, e_b)
        loss = (F.l1_loss(fake, f_a) + 10 * F.l1_loss(fake, f_b)
                + 10 * F.l1_loss(net(fake, e_a), f_a))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocations, Adam state
    steps = max(1, samples // batch)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (steps * batch / (time.perf_counter() - wall), steps * batch / (time.process_time() - cpu))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.125, help="channel multiplier (paper: 1)")
    p.add_argument("--gating", default="full", choices=GATINGS)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--face-size", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--samples", type=int, default=128, help="samples timed per row and impl")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--impls", nargs="+", default=["batched", "loop"], choices=["batched", "loop"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"parameters at width {args.width} (rank {args.rank} for lowrank): "
          "gating | whole U-Net | gating controller")
    for gating in GATINGS:
        with torch.device("meta"):  # shapes only, no memory
            n = GatedUNet(args.face_size, width=args.width, gating=gating, rank=args.rank)
        ctrl = sum(count(m.controller) for m in n.up if hasattr(m, "controller"))
        print(f"  {gating:>8} | {count(n):>12,} | {ctrl:>12,}")
    torch.manual_seed(0)
    net = GatedUNet(args.face_size, width=args.width, gating=args.gating, rank=args.rank).train()
    controller = sum(count(m.controller) for m in net.up if hasattr(m, "controller"))
    print(f"GatedUNet gating={args.gating} width={args.width} face={args.face_size}: "
          f"{count(net):,} parameters ({controller:,} in the gating controller); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average before: {loadavg()}")
    print("samples/s: wall time | CPU time of this process (less disturbed by other jobs)")
    print(f"{'batch':>5} | {'batched':>15} | {'loop':>15} | {'speedup':>13}")
    rates: dict[tuple[str, int], tuple[float, float]] = {}
    for batch in args.batch_sizes:
        for impl in args.impls:
            net.set_impl(impl)
            opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
            rates[impl, batch] = samples_per_second(net, opt, batch, args.samples, args.face_size)
        b, lp = rates.get(("batched", batch)), rates.get(("loop", batch))
        cells = [f"{v[0]:7.1f} | {v[1]:5.1f}" if v else f"{'-':>15}" for v in (b, lp)]
        speed = f"{b[0] / lp[0]:4.1f}x | {b[1] / lp[1]:4.1f}x" if b and lp else f"{'-':>13}"
        print(f"{batch:5d} | {cells[0]} | {cells[1]} | {speed}", flush=True)
    paper = rates.get(("loop", 1))
    best = max(args.batch_sizes)
    if paper and ("batched", best) in rates:
        b = rates["batched", best]
        print(f"batched at batch {best} / the paper's way (the loop at batch 1): "
              f"{b[0] / paper[0]:.1f}x wall, {b[1] / paper[1]:.1f}x CPU time")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
