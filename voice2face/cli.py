"""The ``voice2face`` command: ``voice2face <command> [args]``.

Each command lives in its own module with a ``main(argv) -> int``; they are imported only
when called, so ``voice2face --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "synth": ("voice2face.synth.cli", "generate a synthetic voice-face world as shards"),
    "prepare": ("voice2face.prepare", "convert VoxCeleb + VGGFace folders to shards"),
    "train": ("voice2face.train", "train a method: voice2face train <method> key=value ..."),
    "evaluate": ("voice2face.evaluate", "metrics table and sample grid of a trained checkpoint"),
    "generate": ("voice2face.generate", "generate a face image from an audio file"),
    "results": ("voice2face.results", "train or reuse every method, evaluate alike, write one table"),
    "upgrade": ("voice2face.upgrade", "add the description of its nets to an older checkpoint"),
}


def usage() -> str:
    lines = ["usage: voice2face <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`voice2face <command> --help` describes a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"voice2face: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
