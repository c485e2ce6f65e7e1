"""``voice2face synth``: generate a synthetic voice–face world as shards.

    voice2face synth --preset tiny|default --out DIR [--identities N] [--utterances N]
                     [--faces N] [--known N] [--face-size 64|128] [--seed S] [--workers W]
                     [--layout shards|voxceleb]
    voice2face synth --audit --out DIR [--workers W]

``--audit`` generates nothing: it measures the world already in ``DIR``, what single test
utterances reveal of their speakers from the audio alone (``voice2face.synth.audit``).

``--layout voxceleb`` writes the same world as VoxCeleb1 + VGGFace folder trees instead of
shards (``voice2face.prepare.synth_layout``), to try ``voice2face prepare`` end to end.
"""

from __future__ import annotations

import argparse
import sys
import time

from .world import PRESETS, preset


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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--audit", action="store_true",
                   help="measure the world in --out instead: the audio-only oracle's 1:2 "
                        "accuracy beside the ceiling")
    return p.parse_args(argv)


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
    if args.layout == "voxceleb":
        from voice2face.prepare.synth_layout import main_layout
        return main_layout(args.out, config, workers=args.workers, progress=not args.quiet)
    from .generate import generate_world    # imports the shard writer (and its deps)

    started = time.perf_counter()
    manifest = generate_world(args.out, config, workers=args.workers, progress=not args.quiet)
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
