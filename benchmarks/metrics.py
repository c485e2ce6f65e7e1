"""Wall time and peak memory of the voice-to-face metrics at VoxCeleb1-VGGFace test scale.

    python benchmarks/metrics.py [--probes 21850] [--faces 20455] [--identities 189] [--dim 64]
                                 [--threads N] [--case NAME ...]

``--threads`` defaults to torch's default (the number of cores). On a machine that
other jobs keep busy, prefer ``--threads 1``: OpenMP threads that wait for a
descheduled sibling spin and multiply both wall and CPU time.

Random 64-D embeddings (an identity centre plus noise, so the numbers are not all
chance) with uneven per-identity counts stand in for the test split's 21,850
utterances and 20,455 face images over 189 identities.

Each case runs in a fresh Python process. Time is the wall time of ``compute()``
alone (the states are filled before the clock starts), and the CPU time of the
process over the same span (all threads), which other load on the machine
disturbs less.

Peak memory is the largest resident-set size (RSS) during ``compute()`` minus the
RSS just before it: the kernel's high-water mark (VmHWM) is reset by writing 5 to
/proc/self/clear_refs once the states are filled, and read from /proc/self/status
afterwards. So it counts everything ``compute()`` held at once, torch CPU tensors
included (tracemalloc would not see them). Where the reset is not allowed, the
growth of ``ru_maxrss`` is printed instead (marked ``*``), which can undercount.
For scale: a full probes x faces float32 similarity matrix would take
21,850 x 20,455 x 4 B = 1.7 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from voice2face.metrics import CrossModalMatching, RecallAtK, make_metrics  # noqa: E402

CASES = {
    "match_1to2_exhaustive": lambda: CrossModalMatching(n_way=2, exhaustive=True),
    "match_1to2_gender_exhaustive": lambda: CrossModalMatching(n_way=2, stratify=True, exhaustive=True),
    "match_1to2_sampled_x10": lambda: CrossModalMatching(n_way=2, trials_per_probe=10),
    "recall_cosine_identity": lambda: RecallAtK(),
    "recall_l1_identity": lambda: RecallAtK(similarity="l1"),
    "recall_cosine_image": lambda: RecallAtK(gallery="image"),
    "recall_l1_image": lambda: RecallAtK(similarity="l1", gallery="image"),
    "recall_cosine_block100": lambda: RecallAtK(block_size=100),
    "make_metrics_test_embedding": lambda: make_metrics("test")["embedding"],
    # not run by default: the generating-polynomial path, a few times slower than 1:2
    "match_1to3_exhaustive": lambda: CrossModalMatching(n_way=3, exhaustive=True),
}
DEFAULT_CASES = [name for name in CASES if name != "match_1to3_exhaustive"]


def split(probes: int, faces: int, identities: int, dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uneven identities: counts proportional to 0.5 + U(0, 1) weights."""
    g = torch.Generator().manual_seed(seed)
    weight = 0.5 + torch.rand(identities, generator=g)
    probe_id = torch.multinomial(weight, probes, replacement=True, generator=g)
    face_id = torch.cat([torch.arange(identities), torch.multinomial(weight, faces - identities, True, generator=g)])
    gender = torch.randint(0, 2, (identities,), generator=g)
    centre = torch.randn(identities, dim, generator=g)
    return {
        "probe": centre[probe_id] + 2.0 * torch.randn(probes, dim, generator=g),
        "probe_id": probe_id,
        "face": centre[face_id] + 1.0 * torch.randn(faces, dim, generator=g),
        "face_id": face_id,
        "gender": gender,
    }


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_case(name: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    data = split(args.probes, args.faces, args.identities, args.dim)
    metric = CASES[name]()
    batch = 512  # fill the states the way a test loop would
    for i in range(0, args.probes, batch):
        sl = slice(i, i + batch)
        ids = data["probe_id"][sl]
        metric.update(data["probe"][sl], ids, data["gender"][ids], torch.arange(args.probes)[sl], role="probe")
    for i in range(0, args.faces, batch):
        sl = slice(i, i + batch)
        ids = data["face_id"][sl]
        metric.update(data["face"][sl], ids, data["gender"][ids], torch.arange(args.faces)[sl], role="gallery")
    exact_peak = reset_peak()
    before = status_mib("VmRSS") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    value = metric.compute()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    after = status_mib("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = after - before
    if isinstance(value, dict):
        shown = {k: round(float(v), 6) for k, v in value.items() if "@10" in k or "match" in k}
    else:
        shown = round(float(value), 6)
    return {"case": name, "seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "exact_peak": exact_peak,
            "rss_before_mib": before, "value": shown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=21850)
    parser.add_argument("--faces", type=int, default=20455)
    parser.add_argument("--identities", type=int, default=189)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--case", nargs="*", choices=sorted(CASES), default=DEFAULT_CASES)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args)))
        return

    print(f"{args.probes} probes, {args.faces} faces, {args.identities} identities, {args.dim}-D, "
          f"{args.threads} threads; a full float32 similarity matrix would be "
          f"{args.probes * args.faces * 4 / 2**20:.0f} MiB")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'case':30s} {'wall s':>7s} {'CPU s':>7s} {'peak MiB':>9s}  value")
    forwarded = ["--probes", str(args.probes), "--faces", str(args.faces), "--identities",
                 str(args.identities), "--dim", str(args.dim), "--threads", str(args.threads)]
    for name in args.case:
        out = subprocess.run([sys.executable, __file__, "--child", name, *forwarded],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mark = " " if r["exact_peak"] else "*"
        print(f"{name:30s} {r['seconds']:7.2f} {r['cpu_seconds']:7.2f} {r['peak_mib']:8.1f}{mark}  {r['value']}",
              flush=True)


if __name__ == "__main__":
    main()
