"""Is the installed stack the one ``requirements.lock`` names, and does it load?

``make install`` runs ``python -m voice2face.environment`` right after installing. torch and
torchaudio are the pair that bites: torchaudio's wheel declares a range of torch releases,
but its compiled extension only loads with the torch build of its own release, so a
mismatch shows up as an ``undefined symbol`` deep inside the first import. This check names
both versions and the fix in one line instead.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
# distribution -> module that must import (torchaudio: its compiled extension, not just Python)
MODULES = {
    "torch": "torch",
    "torchaudio": "torchaudio._extension",
    "lightning": "lightning",
    "torchmetrics": "torchmetrics",
    "webdataset": "webdataset",
    "omegaconf": "omegaconf",
    "soundfile": "soundfile",
    "av": "av",
}
FIX = "rebuild the environment from the lock: `rm -rf .venv && make install`"


class EnvironmentMismatch(RuntimeError):
    """The installed packages are not the locked set, or one of them does not load."""


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """``{distribution: version}`` of the ``name==version`` lines of a pip lock file."""
    pins = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[_canonical(m[1])] = m[2]
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def same_release(installed: str | None, locked: str | None) -> bool:
    """``installed`` is the locked release, whatever its local build label: ``2.11.0+cu126``
    (torch from PyTorch's index for a cluster's CUDA) is the release ``2.11.0``."""
    return installed is not None and locked is not None and installed.split("+")[0] == locked


def check_versions(locked: dict[str, str], installed: dict[str, str | None]) -> list[str]:
    """One message per locked distribution of ``MODULES`` whose installed release differs;
    torch and torchaudio are reported together, since they only work as a pair."""
    problems = []
    pair = ("torch", "torchaudio")
    if not all(same_release(installed.get(d), locked.get(d)) for d in pair):
        have = " with ".join(f"{d} {installed.get(d) or '(missing)'}" for d in pair)
        want = " and ".join(f"{d}=={locked.get(d)}" for d in pair)
        problems.append(f"installed {have}, but requirements.lock names {want} "
                        f"(torchaudio only loads with the torch of its own release)")
    for dist in MODULES:
        if dist in pair or dist not in locked:
            continue
        if not same_release(installed.get(dist), locked[dist]):
            problems.append(f"installed {dist} {installed.get(dist) or '(missing)'}, "
                            f"requirements.lock names {dist}=={locked[dist]}")
    return problems


def check_imports() -> list[str]:
    problems = []
    for dist, module in MODULES.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # an ImportError or OSError from a compiled extension
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            problems.append(f"{module} does not import ({dist} {installed_version(dist)}): {first}")
    return problems


def check(lock: Path = LOCK) -> None:
    """Raise ``EnvironmentMismatch`` naming every problem and the fix."""
    if not lock.is_file():
        raise EnvironmentMismatch(f"{lock} is missing: regenerate it with `make lock`")
    locked = locked_versions(lock)
    problems = check_versions(locked, {d: installed_version(d) for d in MODULES})
    problems += check_imports()
    if problems:
        raise EnvironmentMismatch("; ".join(problems) + f"; {FIX}")


def main() -> int:
    try:
        check()
    except EnvironmentMismatch as e:
        print(f"voice2face: environment check failed: {e}", file=sys.stderr)
        return 1
    from voice2face.hardware import detect
    hw = detect()
    print(f"voice2face: environment matches requirements.lock (torch {hw.torch}, "
          f"torchaudio {installed_version('torchaudio')}, "
          f"lightning {installed_version('lightning')}, "
          f"CUDA {'available' if hw.cuda else 'not available'})")
    if hw.warning():
        print(f"voice2face: {hw.warning()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
