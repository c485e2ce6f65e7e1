"""``voice2face synth``: generate a synthetic voice–face world as shards.

    voice2face synth --preset tiny|default --out DIR [--identities N] [--utterances N]
                     [--faces N] [--known N] [--face-size 64|128] [--seed S] [--workers W]
                     [--layout shards|voxceleb] [--overwrite]
    voice2face synth --audit --out DIR [--workers W]

``--audit`` generates nothing: it measures the world already in ``DIR``, what single test
utterances reveal of their speakers from the audio alone (``voice2face.synth.audit``).

``--layout voxceleb`` writes the same world as VoxCeleb1 + VGGFace folder trees instead of
shards (``voice2face.synth.layout``), to try ``voice2face prepare`` end to end.

A folder that holds another world (or anything else) is replaced only with ``--overwrite``,
which also removes what was derived from the old world (``pretrained/``: nets trained on
it). Writing the same world again needs no flag, and resumes: an interrupted run's finished
shards (each recorded in ``OUT/.synth/``) are kept, and only the others are written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from voice2face.errors import UserError, reports_errors

from .world import PRESETS, WorldConfig, preset

# what is made from a world after synth wrote it, and means nothing for another world
DERIVED = ("pretrained",)
WRITTEN = ("manifest.json", "shards", ".synth")  # .synth: the finished shards' records


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="voice2face synth",
                                description="generate a synthetic voice-face world")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="tiny: seconds, for tests; default: 1,225 identities, a few minutes")
    p.add_argument("--out", required=True, help="dataset folder to write (manifest.json, shards/)")
    p.add_argument("--identities", type=int, help="number of identities (split 924:112:189)")
    p.add_argument("--utterances", type=int, help="utterances per identity in its split")
    p.add_argument("--known", type=int, help="extra held-out utterances per training identity")
    p.add_argument("--faces", type=int, help="face images per identity")
    p.add_argument("--face-size", type=int, choices=(64, 128), help="face image side, pixels")
    p.add_argument("--seed", type=int, help="the world's seed (same seed, same world)")
    p.add_argument("--workers", type=int, help="processes (default: the usable CPU cores)")
    p.add_argument("--layout", choices=("shards", "voxceleb"), default="shards",
                   help="shards (the dataset format) or VoxCeleb1 + VGGFace folder trees")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another world (or other files) in --out, and its pretrained/")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--audit", action="store_true",
                   help="measure the world in --out instead: the audio-only oracle's 1:2 "
                        "accuracy beside the ceiling")
    return p.parse_args(argv)


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])


def check_out(out: Path, config: WorldConfig, overwrite: bool) -> None:
    """Stop before writing into a folder that holds something other than this world;
    with ``overwrite``, remove that (and what was derived from it) first."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; expected a folder to write the world into")
    if not out.is_dir() or not any(out.iterdir()):
        return
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        old = old if isinstance(old, dict) else {"kind": "unreadable"}
        source = old.get("source")
        new = {"generator": "voice2face.synth", **config.to_dict()}
        if source == new:
            return  # the same world again: the same shards, and what was derived stays valid
        what = (f"another world ({_differences(source, new)})" if isinstance(source, dict)
                and source.get("generator") == new["generator"]
                else f"a {old.get('kind', 'unknown')!r} dataset")
    else:
        # an interrupted run leaves shards (and what was derived from the world it
        # rewrote, which only the same world can be without --overwrite)
        others = sorted(p.name for p in out.iterdir() if p.name not in (*WRITTEN, *DERIVED))
        if not others:
            return
        what = f"files that are not a world ({', '.join(others[:4])})"
    if not overwrite:
        derived = [d for d in DERIVED if (out / d).exists()]
        raise UserError(f"--out {out} holds {what}; choose another --out, or pass --overwrite "
                        f"to replace it" + (f" (also removes its {', '.join(derived)}/)"
                                            if derived else ""))
    for name in (*WRITTEN, *DERIVED):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _interrupted() -> str:
    return ("interrupted; no world was written yet (the folder has no manifest.json, so "
            "nothing reads it as one); the finished shards are kept: run the same command "
            "again to go on from them")


@reports_errors("voice2face synth", interrupted=_interrupted)
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.audit:
        from .audit import audit_world, format_rows
        try:
            result = audit_world(args.out, workers=args.workers or 1)
        except (OSError, ValueError) as e:
            print(f"voice2face synth --audit: {e}", file=sys.stderr)
            return 2
        print(format_rows({"audio-only oracle": result}, result["ceiling"]))
        return 0
    try:
        config = preset(args.preset, identities=args.identities, utterances=args.utterances,
                        known=args.known, faces=args.faces, face_size=args.face_size,
                        seed=args.seed)
    except ValueError as e:
        print(f"voice2face synth: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.layout == "voxceleb":
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; expected a folder to write the world into")
        from .layout import main_layout
        return main_layout(args.out, config, workers=args.workers, progress=not args.quiet)
    check_out(out, config, args.overwrite)
    from .generate import generate_world    # imports the shard writer (and its deps)

    started = time.perf_counter()
    manifest = generate_world(args.out, config, workers=args.workers, progress=not args.quiet,
                              log=print)
    seconds = time.perf_counter() - started
    counts = ", ".join(f"{s} {v['samples']} ({len(v['shards'])} shards)"
                       for s, v in manifest["splits"].items())
    gallery = ", ".join(f"{s} {v['samples']}" for s, v in manifest["gallery"].items())
    c = manifest["ceilings"]
    print(f"synthetic world '{config.preset}' (seed {config.seed}): "
          f"{len(manifest['identities'])} identities in {seconds:.1f} s")
    print(f"  samples: {counts}")
    print(f"  gallery faces: {gallery}")
    print(f"  Bayes ceiling of 1:2 voice->face matching on test ({c['trials']} trials): "
          f"{c['match_1to2']:.3f} any imposter, {c['match_1to2_gender']:.3f} same gender")
    print(f"  written to {args.out}/manifest.json and {args.out}/shards/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
