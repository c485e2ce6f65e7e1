"""``voice2face train <method> [key=value ...]``: parse, config, seed, data, method, fit.

The run folder ``runs/<method>-<data>-<time>/`` receives the resolved ``config.yaml``,
checkpoints (``checkpoints/last.ckpt`` and the newest ``checkpoints/step<N>.ckpt`` every
``run.checkpoint_every`` batches, and ``checkpoints/final.ckpt``),
``csv/version_<N>/metrics.csv`` (one per start), the W&B run (offline unless
``logger.mode=online``) and, for a method that evaluation measures, its evaluation in
``eval/`` (``run.evaluate``, given an ``eval.judge``). ``run.resume=<folder>``
(or a ``.ckpt``) continues a run from its newest checkpoint that loads; ``run.resume=auto``
does so when the folder named by ``run.name`` already holds one, and starts afresh
otherwise; a fresh run never reuses an existing folder. The checkpoint to resume must be of
the same method and data, which is checked before anything is written. A resumed run
restarts the interrupted epoch of the training stream (shards are not seekable), so a few
samples of that epoch are seen twice; optimizer state and step counts carry on exactly.

Under several processes (DDP), only rank zero writes into the run folder, and every process
derives the same folder name (``voice2face.training.run_name``) without relying on Lightning
re-launching it. Under srun, SIGUSR1 (``--signal=SIGUSR1@90``) saves
``checkpoints/last.ckpt`` at a batch boundary and requeues the job (``voice2face/requeue.py``);
the requeued job, with the same ``run.name`` and ``run.resume=auto`` (``make slurm``),
continues from it.
"""

from __future__ import annotations

import argparse
import sys

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from voice2face.config import load_config, string_leaves
from voice2face.errors import report
from voice2face.methods import METHODS, get_method
from voice2face.requeue import Requeued
from voice2face.training import export, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice2face train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", help=f"one of: {', '.join(sorted(METHODS)) or '(none)'}")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged config and exit")
    parser.add_argument("--export", metavar="PATH",
                        help="also copy the final checkpoint to PATH (e.g. a pretrained net)")
    args = parser.parse_intermixed_args(argv)
    try:
        get_method(args.method)
    except KeyError as e:
        print(f"voice2face train: {e.args[0]}", file=sys.stderr)
        return 2
    cfg = None

    def run() -> int:
        nonlocal cfg
        cfg = load_config(args.method, args.overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        try:
            final = train(cfg, args.overrides)
        except Requeued:  # said by SlurmRequeue; the requeued job continues this run
            return 0
        if args.export and rank_zero_only.rank == 0:
            export(final, args.export)
            print(f"voice2face: exported {args.export}")
        return 0

    def user_paths():  # the config's strings: data.root, run.root, model.voice, ...
        tree = OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}
        return [args.export, *string_leaves(tree)]

    return report("voice2face train", run, paths=user_paths)


if __name__ == "__main__":
    sys.exit(main())
