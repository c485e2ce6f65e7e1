"""benchmarks/gpu_check.py (`make gpu-check`): the wheels it carries to an offline GPU node are
exactly what the node lacks, its plan covers the registry, and its pytest plugin skips only
what an absent optional package breaks."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from packaging.requirements import Requirement

from voice2face.config import load_config
from voice2face.environment import locked_versions
from voice2face.methods import METHODS, PRETRAINED

ROOT = Path(__file__).resolve().parent.parent
# the GPU node: CPython 3.12 on Linux x86_64 (the wheels' platform)
NODE = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
        "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load("gpu_check", ROOT / "benchmarks" / "gpu_check.py")


def requirements(dist: str, extras: tuple[str, ...] = ()) -> set[tuple[str, tuple[str, ...]]]:
    """(name, extras) that ``dist`` requires on the node, as installed here (lock versions)."""
    out = set()
    for line in importlib.metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**NODE, "extra": e})
                                     for e in (extras or ("",))):
            out.add((req.name, tuple(sorted(req.extras))))
    return out


def closure(roots, canonical) -> set[str]:
    seen: dict[str, set[str]] = {}
    todo = [(r, ()) for r in roots]
    while todo:
        name, extras = todo.pop()
        key = canonical(name)
        if key in seen and set(extras) <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        todo += requirements(name, extras)
    return set(seen)


def test_the_wheels_are_what_the_node_lacks(gpu_check):
    canonical = gpu_check.canonical
    lock = set(locked_versions())
    listed = gpu_check.read_packages()
    node = closure(gpu_check.TORCH_STACK, canonical)  # the torch stack and all it requires
    assert set(listed) <= lock, "listed but not in requirements.lock"
    forgotten = lock - set(listed) - node
    assert not forgotten, f"in the lock, neither carried nor on the node: {sorted(forgotten)}"
    carried = {n for n, g in listed.items() if g != "none"}
    shadowing = carried & node
    assert not shadowing, f"carried, but the node's torch stack has them: {sorted(shadowing)}"
    # installed with --no-deps: each group's requirements come with it, before it, or the node
    have = set(node)
    for group in ("core", "full"):
        names = {n for n, g in listed.items() if g == group}
        have |= names
        for name in names:
            if importlib.util.find_spec("wandb") is None and group == "full":
                continue  # a node without the full group (gpu_check runs this file there)
            missing = {canonical(r) for r, _ in requirements(name)} - have
            assert not missing, f"{name} ({group}) requires {sorted(missing)}, not carried"


def test_the_wheel_list_pins_the_lock(gpu_check):
    pins = locked_versions()
    core = gpu_check.wheel_list()
    full = gpu_check.wheel_list(full=True)
    assert set(core) < set(full)
    for line in full:
        name, version = line.split("==")
        assert pins[name] == version
    assert not any(line.startswith(("torch==", "lightning==", "numpy==", "uv==")) for line in full)
    with pytest.raises(ValueError, match="not-a-package"):
        gpu_check.wheel_list(packages={"not-a-package": "core"})


def test_the_dry_run_plans_every_method_and_builds_each_net_before_its_users(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                           "--dry-run", "--allow-cpu", "--wheels", str(tmp_path / "none")],
                          capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = re.findall(r"^  (\S.*?)  \(cap", proc.stdout, re.M)
    commands = dict(zip(checks, re.findall(r"^    \$ (.*)$", proc.stdout, re.M)))
    for method in METHODS:
        cmd = commands[f"paper {method}"]
        assert f" train {method} " in cmd
        assert "profile=paper" in cmd and "trainer.precision=bf16-mixed" in cmd
        # every pretrained net its paper profile loads is built before it runs
        cfg = load_config(method, ["profile=paper", f"data.root={tmp_path}"])
        for path in re.findall(r"[^\s'\"]+\.ckpt", OmegaConf.to_yaml(cfg, resolve=True)):
            if Path(path).parent == tmp_path / "pretrained":
                built_at = checks.index(f"pretrained {Path(path).stem}")
                assert built_at < checks.index(f"paper {method}")
    built = [c.split()[1] for c in checks if c.startswith("pretrained ")]
    assert {"voice", "face", "face-target", "decoder"} <= set(built)
    assert built.index("face-target") < built.index("decoder")
    for name in built:  # each by the run the registry (and so make) makes it with
        method, overrides = PRETRAINED[name]
        words = commands[f"pretrained {name}"].split()
        assert words[words.index("train") + 1] == method and set(overrides) <= set(words)
    assert {"ddp gan", "train_step fp32", "train_step bf16-cl", "datamodule"} <= set(checks)
    assert "--channels-last" in commands["train_step bf16-cl"]


def test_the_plugin_skips_only_an_absent_optional_package(monkeypatch):
    plugin = load("gpu_check_pytest", ROOT / "benchmarks" / "gpu_check_pytest.py")
    monkeypatch.setattr(plugin, "ABSENT", ("wandb", "av"))
    assert plugin.missing_module(ModuleNotFoundError("No module named 'av'", name="av")) == "av"
    lightning_style = ModuleNotFoundError("Requirement 'wandb>=0.12.10' not met")
    assert plugin.missing_module(lightning_style) == "wandb"
    try:
        try:
            raise ModuleNotFoundError("No module named 'wandb.sdk'", name="wandb.sdk")
        except ModuleNotFoundError as e:
            raise RuntimeError("training failed") from e
    except RuntimeError as e:
        assert plugin.missing_module(e) == "wandb"
    assert plugin.missing_module(ModuleNotFoundError("x", name="omegaconf")) is None
    assert plugin.missing_module(ImportError("cannot import name 'wandb'")) is None
    monkeypatch.setattr(plugin, "ABSENT", ())
    assert plugin.missing_module(ModuleNotFoundError("x", name="av")) is None


def test_the_train_step_rows_become_sub_rows(gpu_check):
    out = """torch 2.11.0, lightning 2.6.6, NVIDIA H100, ...
  done: gan ...
  done: face ...
training samples/s (suite: Lightning training_step; plain: the same update in plain PyTorch)
method        profile batch |    suite    plain suite/plain | MiB suite MiB plain
gan           paper     128 |   5123.4   5400.1        0.95 |      2345      2001
face          paper     128 |   9000.0   9100.0        0.99 |       812       790
load average after: 1.00 0.50 0.20
"""
    check = gpu_check.Check("train_step fp32", [], 1)
    check.lines = [(float(i), line + "\n") for i, line in enumerate(out.splitlines())]
    assert gpu_check.key_train_step(check) == "2 methods"
    (gan, face) = check.rows
    assert gan[0] == "gan" and "suite/plain 0.95" in gan[3]
    assert "MiB suite 2345" in gan[3] and "MiB plain 2001" in gan[3]
    assert face[2] == 1.0  # seconds between its "done" line and the one before
    tests = gpu_check.Check("tests 1/2", [], 1)
    tests.lines = [(0.0, "FAILED tests/test_x.py::test_y\n"),
                   (1.0, "1 failed, 40 passed, 3 skipped, 2 deselected in 61.20s (0:01:01)\n")]
    assert gpu_check.key_tests(tests) == "1 failed, 40 passed, 3 skipped, 2 deselected"
