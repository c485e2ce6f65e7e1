"""The instrument table of a synthetic world: what a voice reveals, seen through the judge.

    python benchmarks/instrument.py --data data/synth-default [--judge CKPT] [--voice CKPT]
                                    [--frontier 1 2 4 8 32]

Prints ``voice2face.evaluation.instrument``'s table (its docstring defines the rows and
columns: the o-oracle, the voice-embedder oracle, the gender-only control, real faces,
chance and the ceiling, through the judge's embedding and in attribute space), then the
read-outs' R² on the test gallery and the voice probe's on the test utterances.
``voice2face results`` writes the same table into docs/results.md.

``--frontier K ...`` adds the trade between matching and looking real: the voice-embedder
oracle's faces as the mean of K posterior samples (``posterior_sample_faces``), from a real
face drawn for the voice (K = 1, Fréchet near real faces') toward the posterior mean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voice2face.constants import default_judge, pretrained_dir  # noqa: E402
from voice2face.evaluation.instrument import COLUMNS, ROWS, measure  # noqa: E402


def format_table(result: dict) -> str:
    """The rows as a text table, then the read-outs' and the voice probe's R²."""
    lines = [f"{'':34s}" + "".join(f"{h:>12s}" for _, h, _ in COLUMNS)]
    for key, row in result["rows"].items():
        lines.append(f"{ROWS[key]:34s}" + "".join(f"{row[k]:12.3f}" if k in row else f"{'—':>12s}"
                                                  for k, _, _ in COLUMNS))
    r2 = "  ".join(f"{k.rsplit('_', 1)[1]} {v:.3f}" for k, v in result["readout_r2"].items())
    voice = "  ".join(f"{k} {v:.3f}" for k, v in result["voice_r2"].items())
    lines += ["", f"read-outs' R² on single test gallery faces: {r2}",
              f"voice probe's R² of o on test utterances: {voice}; sigma "
              f"{np.round(result['sigma'], 3).tolist()} widened to "
              f"{np.round(result['sigma_voice'], 3).tolist()}"]
    if result.get("frontier"):
        lines += ["", "voice-embedder oracle, the mean of K posterior samples:",
                  f"{'K':>34s}" + "".join(f"{h:>12s}" for _, h, _ in COLUMNS)]
        lines += [f"{k:>34d}" + "".join(f"{row[c]:12.3f}" for c, _, _ in COLUMNS)
                  for k, row in result["frontier"].items()]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/synth-default")
    p.add_argument("--judge", default=None, help="default: DATA/pretrained/face.ckpt")
    p.add_argument("--voice", default=None, help="default: DATA/pretrained/dimnet.ckpt")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--frontier", type=int, nargs="*", default=[],
                   help="numbers of posterior samples to average (the match/Fréchet trade)")
    a = p.parse_args()
    data = Path(a.data)
    judge = Path(a.judge) if a.judge else default_judge(data)
    voice = Path(a.voice) if a.voice else pretrained_dir(data) / "dimnet.ckpt"
    result = measure(data, judge, voice, batch_size=a.batch_size, workers=a.workers,
                     frontier=a.frontier)
    print(f"judge {judge}, voice embedder {voice}, world {data}: {result['counts']}")
    print(format_table(result))


if __name__ == "__main__":
    main()
