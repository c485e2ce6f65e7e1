"""`voice2face prepare`: VoxCeleb1/2 and VGGFace folders, in their own layouts, to shards.

``meta`` reads the meta files and matches names, ``audio`` and ``faces`` turn one file into
what a shard stores, ``plan`` decides every shard's contents up front, ``run`` executes the
plan resumably on a process pool and writes ``prepare_report.json`` and the manifest.
``voice2face.synth.layout`` writes a synthetic world in VoxCeleb's layout, to try the whole
path.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    # imported on call, so that `voice2face --help` does not load torch
    from .run import main as run_main

    return run_main(argv)
