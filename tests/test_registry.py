"""The registry's specs (``voice2face.methods``), the facts ``python -m voice2face.registry``
gives make, and make acting on them (``make -n``: printed, not run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import voice2face.methods as registry
from voice2face.config import EXPERIMENTS, load_config, string_leaves
from voice2face.constants import default_judge
from voice2face.methods import PRETRAINED, SPECS, MethodSpec, get_method, pretrained_needs

REPO = EXPERIMENTS.parent
PROFILES = ("cpu", "paper")
JUDGE = Path(default_judge("")).stem  # the judge's stem in DATA/pretrained


@pytest.mark.parametrize("name", list(SPECS))
def test_each_spec_is_the_class_its_config_trains(name):
    spec = SPECS[name]
    assert spec.name == name and get_method(name) is spec.cls
    assert load_config(name, ["profile=cpu"]).method == name
    # a variant (a config that extends another) is that method's class under its own name
    parent = (yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text()) or {}).get("extends")
    if parent:
        assert SPECS[parent].cls is spec.cls


def test_every_method_config_has_a_spec():
    assert {p.stem for p in EXPERIMENTS.glob("*.yaml")} - {"base"} == set(SPECS)


@pytest.mark.parametrize("name", list(SPECS))
def test_rows_are_one_per_variant_value_and_load_as_configs(name):
    spec = SPECS[name]
    rows = spec.rows()
    if not spec.variants:
        assert rows == [(name, ())]
    assert len(rows) == max(1, sum(len(v) for v in spec.variants.values()))
    for key, values in spec.variants.items():
        got = {}
        for row, overrides in rows:
            cfg = load_config(name, ["profile=cpu", *overrides])  # a valid config
            if any(o.startswith(f"{key}=") for o in overrides):
                got[row] = str(OmegaConf.select(cfg, key))
        assert sorted(got.values()) == sorted(map(str, values))


def test_row_names_are_unique_across_the_registry():
    names = [row for spec in SPECS.values() for row, _ in spec.rows()]
    assert len(names) == len(set(names))


def test_the_sweep_is_the_file_when_there_is_one(tmp_path, monkeypatch):
    for spec in SPECS.values():
        path = EXPERIMENTS / "sweeps" / f"{spec.name}.yaml"
        assert spec.sweep == (path if path.is_file() else None)
    monkeypatch.setattr(registry, "experiments_dir", lambda: tmp_path)
    spec = MethodSpec("toy", SPECS["gan"].cls, "a method without a sweep yet")
    assert spec.sweep is None
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "toy.yaml").write_text("method: bayes\n")
    assert spec.sweep == tmp_path / "sweeps" / "toy.yaml"


# --- pretrained_needs: read from the config --------------------------------------------------

def named_stems(method: str, profile: str, *overrides: str) -> set[str]:
    """The stems of DATA/pretrained that the config's model section names."""
    root = Path("/data-root")
    cfg = load_config(method, [f"data.root={root}", f"profile={profile}", *overrides])
    leaves = string_leaves(OmegaConf.to_container(cfg.model, resolve=True))
    return {Path(p).stem for p in leaves if Path(p).parent == root / "pretrained"}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", list(SPECS))
def test_pretrained_needs_are_what_the_config_names_and_the_judge(name, profile):
    needs = pretrained_needs(name, profile)
    named = named_stems(name, profile)
    assert set(needs) == (named | ({JUDGE} if SPECS[name].needs_judge else set())) & set(PRETRAINED)
    assert len(needs) == len(set(needs))


def test_pretrained_needs_follow_the_profile_and_the_overrides():
    cpu_voice = Path(load_config("gan", ["profile=cpu"]).model.voice).stem
    paper_voice = Path(load_config("gan", ["profile=paper"]).model.voice).stem
    assert cpu_voice != paper_voice  # the cpu profile loads another voice embedder
    assert cpu_voice in pretrained_needs("gan", "cpu")
    assert paper_voice in pretrained_needs("gan", "paper")
    assert paper_voice not in pretrained_needs("gan", "cpu")
    # an override to another stem of the data's folder needs that one; a path elsewhere none
    # (the cpu profile's feature term reads the same DIMNet: moved with it)
    moved = pretrained_needs("gan", "cpu",
                             [f"model.voice=${{paths.pretrained}}/{paper_voice}.ckpt",
                              "model.target=null"])
    assert paper_voice in moved and cpu_voice not in moved
    assert not {cpu_voice, paper_voice} & set(
        pretrained_needs("gan", "cpu", [f"model.voice=/elsewhere/{cpu_voice}.ckpt",
                                        f"model.target=/elsewhere/{cpu_voice}.ckpt"]))
    # the judge is the config's too
    assert pretrained_needs("gan", "cpu", ["eval.judge=/elsewhere/face.ckpt"]) == [cpu_voice]


def test_every_pretrained_net_is_made_by_a_method_whose_config_loads():
    for stem, (method, overrides) in PRETRAINED.items():
        cfg = load_config(method, ["profile=cpu", *overrides])
        assert cfg.method == method
        assert stem not in pretrained_needs(method, "cpu", overrides)  # not made from itself


# --- python -m voice2face.registry make, and make reading it ----------------------------------

@pytest.fixture(scope="module")
def registry_mk(tmp_path_factory) -> Path:
    """What the Makefile includes, made by the command it runs."""
    done = subprocess.run([sys.executable, "-m", "voice2face.registry", "make"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    path = tmp_path_factory.mktemp("registry") / "registry.mk"
    path.write_text(done.stdout)
    return path


def make_variables(text: str) -> dict[str, list[str]]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(":=")
            out[name.strip()] = value.split()
    return out


def test_the_make_variables_are_the_registrys_facts(registry_mk):
    facts = make_variables(registry_mk.read_text())
    assert facts.pop("METHOD_NAMES") == list(SPECS)
    for stem, (method, overrides) in PRETRAINED.items():
        assert facts.pop(f"MAKER_{stem}") == [method, *overrides]
    for profile in PROFILES:
        for name in SPECS:
            assert facts.pop(f"NEEDS_{profile}_{name}") == pretrained_needs(name, profile)
        every = {s for n, spec in SPECS.items() if spec.evaluable
                 for s in pretrained_needs(n, profile)}
        results = facts.pop(f"NEEDS_{profile}_results")
        assert set(results) == every and len(results) == len(every)
    assert not facts  # nothing else


def make_n(registry: Path, data: Path, *goal: str) -> list[str]:
    """The commands ``make -n`` prints for ``goal`` with this registry file."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), *goal,
                           f"DATA={data}", f"REGISTRY={registry}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return re.sub(r"\\\n\s*", " ", done.stdout).splitlines()  # a command's continued lines as one


def trains(lines: list[str]) -> list[tuple[int, str, str | None]]:
    """``(line, method, exported stem or None)`` of each ``voice2face train`` command."""
    out = []
    for i, line in enumerate(lines):
        if m := re.search(r"voice2face train (\S+) ", line):
            export = re.search(r"--export (\S+)\.ckpt", line)
            out.append((i, m.group(1), Path(export.group(1)).name if export else None))
    return out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_trains_after_making_each_needed_net_in_dependency_order(registry_mk, tmp_path):
    data = tmp_path / "world"
    lines = make_n(registry_mk, data, "train", "METHOD=regression", "PROFILE=cpu")
    runs = trains(lines)
    built = {stem: (i, method) for i, method, stem in runs if stem}
    (train_at,) = [i for i, method, stem in runs if method == "regression" and not stem]
    assert f"data.root={data}" in lines[train_at] and "profile=cpu" in lines[train_at].split()
    needed = pretrained_needs("regression", "cpu")
    assert needed and all(built[s][0] < train_at for s in needed)
    # each net after the nets its own maker needs, trained by its maker
    for stem, (at, method) in built.items():
        maker, overrides = PRETRAINED[stem]
        assert method == maker and all(o in lines[at].split() for o in overrides)
        assert str(data / "pretrained" / f"{stem}.ckpt") in lines[at]
        for dep in pretrained_needs(maker, "cpu", overrides):
            assert built[dep][0] < at, (stem, dep)
    maker, overrides = PRETRAINED["decoder"]
    assert "decoder" in built and pretrained_needs(maker, "cpu", overrides)  # not vacuous


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_has_no_table_of_its_own(tmp_path):
    """Another registry file gives make other nets and other makers: it knows them only from
    there."""
    registry = tmp_path / "registry.mk"
    registry.write_text("METHOD_NAMES := gan\nMAKER_mine := voice seed=7\n"
                        "NEEDS_cpu_gan := mine\nNEEDS_cpu_voice :=\n")
    data = tmp_path / "world"
    lines = make_n(registry, data, "train-now", "METHOD=gan", "PROFILE=cpu")
    runs = trains(lines)
    assert [(method, stem) for _, method, stem in runs] == [("voice", "mine"), ("gan", None)]
    assert "seed=7" in lines[runs[0][0]].split()
    assert str(data / "pretrained" / "mine.ckpt") in lines[runs[0][0]]
