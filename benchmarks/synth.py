"""Cost of the synthetic world: render times per item, and a whole world written as shards.

    python benchmarks/synth.py                 # per-item costs + the tiny world
    python benchmarks/synth.py --preset default --workers 2

Prints CPU milliseconds per utterance (and per second of audio), per face, per FLAC/PNG
encoding, then the wall time of ``generate_world`` with the machine's load average, since
the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from voice2face.synth import preset, render_face, render_utterance, sample_identities


def cpu_ms(fn, items) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return 1000 * (time.process_time() - start) / len(items)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--workers", type=int)
    p.add_argument("--items", type=int, default=40)
    args = p.parse_args()

    config = preset("default")
    identities = sample_identities(config)[: args.items]
    render_utterance(identities[0], 0, config)                      # warm caches
    lengths = [len(render_utterance(i, 0, config)) for i in identities]
    seconds = np.mean(lengths) / config.sample_rate
    utt = cpu_ms(lambda i: render_utterance(i, 0, config), identities)
    clean = cpu_ms(lambda i: render_utterance(i, 0, config, clean=True), identities)
    face = cpu_ms(lambda i: render_face(i, 0, config), identities)
    print(f"utterance ({seconds:.2f} s mean): {utt:.1f} ms CPU ({utt / seconds:.1f} ms per second "
          f"of audio; {clean:.1f} ms without room and noise)")
    print(f"face {config.face_size}px: {face:.1f} ms CPU")

    from datamodules.shards import encode_flac, encode_png   # imports torch via datamodules
    audio = render_utterance(identities[0], 0, config)
    image = render_face(identities[0], 0, config)
    print(f"encode: FLAC {cpu_ms(lambda _: encode_flac(audio), range(20)):.1f} ms, "
          f"PNG {cpu_ms(lambda _: encode_png(image), range(20)):.2f} ms")

    from voice2face.synth.generate import generate_world
    world = preset(args.preset)
    with tempfile.TemporaryDirectory() as out:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        manifest = generate_world(out, world, workers=args.workers, progress=False)
        wall = time.perf_counter() - start
    n = sum(v["samples"] for v in manifest["splits"].values())
    print(f"generate_world({args.preset}): {wall:.1f} s wall for {n} samples and "
          f"{sum(v['samples'] for v in manifest['gallery'].values())} gallery faces, "
          f"{args.workers or len(os.sched_getaffinity(0))} workers, load average {load:.1f}")


if __name__ == "__main__":
    main()
