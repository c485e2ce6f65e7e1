"""``voice2face upgrade CKPT [--out PATH]``: a checkpoint saved before checkpoints described
their nets, brought up to date without retraining.

The checkpoint's method is rebuilt from it through the registry, which says what nets it
exports and how to rebuild them (``MethodModule.net_descriptions``); that description is
added as the checkpoint's ``nets`` entry and the checkpoint written back, atomically, in
place or to ``--out``. Everything else, the weights included, is written as it was read, so
``methods.pretrained`` then loads from it exactly the nets the method trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voice2face.errors import check_output_path, reports_errors


def upgrade(path: str | Path, out: str | Path | None = None) -> dict[str, dict]:
    """Write the checkpoint at ``path``, with its ``nets`` entry, to ``out`` (by default over
    itself: one that has the entry already is then left untouched); returns the entry."""
    # both import Lightning, which `voice2face upgrade --help` need not wait for
    from voice2face.atomic import AtomicCheckpointIO
    from voice2face.methods import load_method
    from voice2face.methods.base import read_checkpoint
    path, out = Path(path), Path(out or path)
    checkpoint = read_checkpoint(path)  # an error naming the file unless it is a voice2face one
    if "nets" in checkpoint and out == path:
        return checkpoint["nets"]
    checkpoint["nets"] = load_method(path).net_descriptions()
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
    return checkpoint["nets"]


@reports_errors("voice2face upgrade")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice2face upgrade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="checkpoint of a trained method")
    parser.add_argument("--out", help="write the upgraded checkpoint here (default: over CKPT)")
    args = parser.parse_args(argv)
    if args.out:
        check_output_path("--out", Path(args.out))
    nets = upgrade(args.ckpt, args.out)
    described = ", ".join(f"{name} ({spec['net']})" for name, spec in nets.items()) or "none"
    print(f"voice2face upgrade: {args.out or args.ckpt} exports nets: {described}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
