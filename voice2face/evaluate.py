"""``voice2face evaluate --ckpt CKPT [--data DIR] [--judge CKPT] --out DIR``

Runs the test split through a trained method and writes, into ``--out``:

* ``metrics.json``: every number, per row;
* ``metrics.md``: the table, with its reference rows;
* ``grid.png``: for a seeded sample of test identities, real faces beside faces generated
  from several of their utterances (methods that generate faces); between them, for a
  method that makes them, its ``reference_faces`` of a real face (the regression's decoding
  of the face's true feature).

The judge is a ``face`` checkpoint trained on the same data (checked by the data
fingerprint); it defaults to the data's judge (``voice2face.constants.default_judge``), and
``--data`` to the data the checkpoint was trained on. Data other than the checkpoint's
(another identity table, by the fingerprint the checkpoint records) is refused unless
``--allow-other-data`` is given.
``--decoder PATH`` replaces the method's ``decoder`` part (a method that lists it in
``replaceable_parts``, e.g. ``regression``'s face decoder).

The protocol itself is ``voice2face.evaluation``'s (below).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from voice2face import evaluation
from voice2face.constants import default_judge
from voice2face.errors import UserError, reports_errors
from voice2face.evaluation import evaluate, markdown_table


def _device(text: str) -> str:
    """An argparse ``type``: auto, cpu, cuda or cuda:N."""
    index = text[len("cuda:"):] if text.startswith("cuda:") else None
    if text in ("auto", "cpu", "cuda") or (index is not None and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: expected auto, cpu, cuda or "
                                     f"cuda:N")


def _resolve_device(device: str) -> str:
    """The device to evaluate on; a GPU that torch cannot use is refused before any work."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch cannot use a GPU here (torch "
                            f"{torch.__version__}, CUDA build {torch.version.cuda}); pass "
                            f"--device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                            f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


# how the data module says a corrupt shard can be used in training; evaluate measures every
# test sample, so it says what evaluate's user can do instead
_SKIP_CORRUPT = "; rewrite it, or set data.skip_corrupt=true"


@reports_errors("voice2face evaluate")
def main(argv: list[str] | None = None) -> int:
    from voice2face.errors import check_output_path, int_in
    parser = argparse.ArgumentParser(prog="voice2face evaluate",
                                     description=f"{__doc__}\n{evaluation.__doc__}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint of a trained method")
    parser.add_argument("--out", required=True, help="folder for metrics.json, metrics.md, grid.png")
    parser.add_argument("--data", help="dataset folder (default: the checkpoint's training data)")
    parser.add_argument("--allow-other-data", action="store_true",
                        help="evaluate on --data even when it is not the data the checkpoint "
                             "was trained on (another identity table)")
    parser.add_argument("--judge", help=f"face checkpoint (default: {default_judge('DATA')})")
    parser.add_argument("--decoder", help="replace the method's face decoder with this checkpoint "
                        "(methods with a `decoder` part: regression)")
    parser.add_argument("--batch-size", type=int_in(1, 65536), default=64)
    parser.add_argument("--workers", type=int_in(0, 256), default=0, help="DataLoader workers")
    parser.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    parser.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--grid-identities", type=int_in(0, 1000), default=8)
    parser.add_argument("--grid-utterances", type=int_in(1, 100), default=4)
    args = parser.parse_args(argv)
    device = _resolve_device(args.device)
    check_output_path("--out", Path(args.out), folder=True)
    if args.data and Path(args.data).exists() and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} is a file; expected a dataset folder")
    from datamodules import DataFormatError
    try:
        r = evaluate(args.ckpt, args.out, args.data, args.judge, batch_size=args.batch_size,
                     num_workers=args.workers, seed=args.seed, device=device,
                     grid_identities=args.grid_identities, grid_utterances=args.grid_utterances,
                     parts={"decoder": args.decoder} if args.decoder else None,
                     allow_other_data=args.allow_other_data)
    except DataFormatError as e:
        head, found, _ = str(e).partition(_SKIP_CORRUPT)
        if not found:
            raise
        raise DataFormatError(f"{head}; evaluation measures every test sample: rewrite the "
                              f"data (the same `voice2face synth` command rewrites a damaged "
                              f"shard of a synthetic world; `voice2face prepare --overwrite` "
                              f"rewrites prepared data)") from None
    print(markdown_table(r))
    print(f"voice2face: wrote {r['files']['json']}, {r['files']['table']}"
          + (f", {r['files']['grid']}" if r["files"]["grid"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
