"""What several test modules share that is not a fixture (the fixtures are in conftest.py):
short trainings on a tiny world and the pretrained nets they load, fixed batches, speech-like
audio, the keys of a split's shards, scripts loaded as modules and the package's import
graph."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import numpy as np
import scipy.signal
import torch
from torch.utils.data import IterableDataset

from datamodules import VoiceFaceDataModule, read_manifest
from datamodules.shards import iter_tar
from voice2face.config import load_config
from voice2face.constants import SAMPLE_RATE
from voice2face.methods import PRETRAINED, pretrained_needs
from voice2face.training import export, train

REPO = Path(__file__).resolve().parent.parent

# --- short trainings -------------------------------------------------------------------------

# Settings that make any method's run take seconds on a tiny world.
QUICK = ["data.batch_size=4", "data.num_workers=0", "data.crop_seconds=0.3",
         "logger.wandb=false", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
         "run.checkpoint_every=100", "run.evaluate=false", "profile=cpu", "seed=0"]
# benchmarks/train_step.py's batches on the tiny world
SMALL = ["data.batch_size=6", "data.crop_seconds=0.3"]


def quick_config(method: str, root: Path, runs: Path, *overrides: str):
    return load_config(method, [f"data.root={root}", f"run.root={runs}", *QUICK, *overrides])


def train_quick(method: str, root: Path, runs: Path, *overrides: str) -> Path:
    """Final checkpoint of a short run of ``method`` on ``root``."""
    return train(quick_config(method, root, runs, *overrides))


def pretrained_nets(root: Path) -> Path:
    """``root/pretrained/<stem>.ckpt`` of every net of the registry's ``PRETRAINED``, each by
    its run and after the nets that run needs, as make builds them; trained once per world."""
    folder = root / "pretrained"

    def build(name: str) -> None:
        if (folder / f"{name}.ckpt").is_file():
            return
        method, overrides = PRETRAINED[name]
        for need in pretrained_needs(method, "cpu", overrides):
            build(need)
        final = train_quick(method, root, root.parent / f"{root.name}-pretrain-runs",
                            "trainer.max_steps=6", f"run.name={name}", *overrides)
        export(final, folder / f"{name}.ckpt")

    for name in PRETRAINED:
        build(name)
    return folder


def parameters_of(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``net``'s trainable parameters, to compare after training."""
    return {k: p.detach().clone() for k, p in net.named_parameters()}


def changed_parameters(net: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    """The parameters of ``net`` that differ from ``before`` (``parameters_of``)."""
    return {k for k, p in net.named_parameters() if not torch.equal(p.detach(), before[k])}


# --- batches ---------------------------------------------------------------------------------

class Repeat(IterableDataset):
    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __iter__(self):
        return iter([self.batch] * self.n)


def fixed_batch(root: Path, n: int = 6) -> dict:
    dm = VoiceFaceDataModule(root, batch_size=n, num_workers=0, crop_seconds=0.3)
    return next(iter(dm.train_dataloader()))


def one_identity(batch: dict) -> dict:
    """``batch`` relabelled as if every sample were of its first sample's identity."""
    return {**batch, "identity": torch.full_like(batch["identity"], int(batch["identity"][0])),
            "label": torch.full_like(batch["label"], int(batch["label"][0]))}


def all_keys(root: Path, split: str) -> list[str]:
    """The key of every sample in ``split``'s shards, in shard order."""
    m = read_manifest(root)
    return [s["__key__"] for e in m["splits"][split]["shards"]
            for s in iter_tar(root / "shards" / e["name"])]


# --- audio -----------------------------------------------------------------------------------

def speechlike(seconds: float, f0: float, sr: int = SAMPLE_RATE, seed: int = 0,
               silence: float = 0.4) -> np.ndarray:
    """A voiced, syllable-modulated signal between silences: webrtcvad takes it for speech.

    A glottal pulse train through three formant resonators, amplitude-modulated at 4 Hz,
    with ``silence`` seconds of near-silence before and after.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    phase = np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / sr
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    x = pulses.copy()
    for fc, bw in ((700, 130), (1200, 150), (2600, 250)):
        r, th = np.exp(-np.pi * bw / sr), 2 * np.pi * fc / sr
        x += 3 * scipy.signal.lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], pulses)
    x *= 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    x = 0.5 * x / np.abs(x).max()
    pad = np.zeros(int(silence * sr))
    out = np.concatenate([pad, x, pad]) + 1e-4 * rng.standard_normal(2 * len(pad) + n)
    return out.astype(np.float32)


# --- scripts and source ----------------------------------------------------------------------

def load_script(name: str, path: Path):
    """The Python file at ``path`` (a benchmark script, not a package module) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


PACKAGES = ("voice2face", "datamodules")


def module_files() -> dict[str, Path]:
    """Every module of the packages by dotted name, and its file."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``name`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each package module and the package modules it imports."""
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}
