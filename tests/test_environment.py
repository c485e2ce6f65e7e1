"""The installed stack is the locked one, and the check that ``make install`` runs says so
clearly when it is not."""

from __future__ import annotations

import re
from pathlib import Path

from voice2face.environment import (LOCK, MODULES, check_imports, check_versions,
                                    installed_version, locked_versions)

ROOT = Path(__file__).resolve().parent.parent


def test_installed_torch_pair_is_the_locked_pair():
    locked = locked_versions()
    for dist in ("torch", "torchaudio"):  # a cluster's CUDA build: 2.11.0+cu126
        assert installed_version(dist).split("+")[0] == locked[dist], (
            f"installed {dist} {installed_version(dist)}, requirements.lock names "
            f"{dist}=={locked[dist]}: rebuild with `rm -rf .venv && make install`")
    problems = check_versions(locked, {d: installed_version(d) for d in MODULES})
    assert problems == [], problems


def test_compiled_extensions_load():
    assert check_imports() == []


def test_a_mismatched_pair_is_one_message_naming_both_versions_and_the_fix():
    locked = {"torch": "2.11.0", "torchaudio": "2.11.0", "lightning": "2.6.6"}
    problems = check_versions(locked, {"torch": "2.11.0", "torchaudio": "2.11.1",
                                       "lightning": "2.6.6"})
    assert len(problems) == 1
    assert "torch 2.11.0 with torchaudio 2.11.1" in problems[0]
    assert "torch==2.11.0 and torchaudio==2.11.0" in problems[0]
    missing = check_versions(locked, {"torch": "2.11.0", "torchaudio": "2.11.0",
                                      "lightning": None})
    assert missing == ["installed lightning (missing), requirements.lock names lightning==2.6.6"]


def test_a_local_build_of_the_locked_release_passes_and_another_release_does_not():
    locked = {"torch": "2.11.0", "torchaudio": "2.11.0", "lightning": "2.6.6"}
    cluster = {"torch": "2.11.0+cu126", "torchaudio": "2.11.0+cu126", "lightning": "2.6.6"}
    assert check_versions(locked, cluster) == []
    for other in ("2.11.1+cu126", "2.11.01", "2.1", "2.11.0.post1", "2.11"):
        problems = check_versions(locked, {**cluster, "torch": other})
        assert len(problems) == 1 and f"torch {other} with torchaudio 2.11.0+cu126" in problems[0]


def test_the_lock_pins_every_package_exactly():
    lines = [l for l in LOCK.read_text().splitlines() if l.strip() and not l.startswith("#")]
    loose = [l for l in lines if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s=<>~!]+", l)]
    assert loose == []
    pins = locked_versions()
    assert "voice2face" not in pins and "pip" not in pins  # the package and pip are not locked
    for dist in ("lightning", "torchmetrics", "webdataset", "omegaconf", "wandb", "pytest"):
        assert dist in pins


def test_pyproject_pins_torch_and_torchaudio_to_the_locked_release():
    text = (ROOT / "pyproject.toml").read_text()
    pinned = dict(re.findall(r'"(torch|torchaudio)==([^"]+)"', text))
    assert not re.search(r'"torch(audio)?\s*[<>~!]', text)  # no range beside the pins
    locked = locked_versions()
    assert pinned == {"torch": locked["torch"], "torchaudio": locked["torchaudio"]}
