"""Config layering, struct mode and the command line's handling of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from voice2face import cli
from voice2face.config import EXPERIMENTS, ConfigError, load_config
from voice2face.methods import METHODS, get_method
from voice2face.train import main as train_main

METHOD_FILES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem != "base")


@pytest.fixture
def experiments(tmp_path) -> Path:
    (tmp_path / "base.yaml").write_text(
        "method: ???\nprofile: auto\nseed: 0\ndata: {root: d, batch_size: 8}\n")
    (tmp_path / "toy.yaml").write_text(
        "model: {width: 4, depth: 2}\n"
        "profiles:\n  cpu: {model: {width: 8}}\n  paper: {model: {width: 64}, data: {batch_size: 128}}\n")
    return tmp_path


def test_layers_merge_in_order(experiments):
    cfg = load_config("toy", ["model.depth=3"], root=experiments)
    assert (cfg.method, cfg.profile, cfg.model.width, cfg.model.depth) == ("toy", "cpu", 8, 3)
    cfg = load_config("toy", ["profile=paper", "model.width=5"], root=experiments)
    assert (cfg.profile, cfg.model.width, cfg.data.batch_size) == ("paper", 5, 128)
    assert "profiles" not in cfg


def test_unknown_key_is_an_error_that_names_it(experiments):
    with pytest.raises(ConfigError, match="model.widht"):
        load_config("toy", ["model.widht=3"], root=experiments)
    with pytest.raises(ConfigError, match="key=value"):
        load_config("toy", ["model.width"], root=experiments)
    (experiments / "bad.yaml").write_text("profiles: {cpu: {modle: {width: 1}}}\n")
    with pytest.raises(ConfigError, match="modle"):
        load_config("bad", [], root=experiments)
    with pytest.raises(ConfigError, match="no profile 'tpu'"):
        load_config("toy", ["profile=tpu"], root=experiments)


def test_struct_mode_after_merge(experiments):
    cfg = load_config("toy", [], root=experiments)
    with pytest.raises(Exception):
        cfg.model.new_key = 1


@pytest.mark.parametrize("method", METHOD_FILES)
def test_every_experiment_config_loads(method):
    """Habit 11: each config file merges, and its method is registered."""
    cfg = load_config(method, ["profile=cpu"])
    assert cfg.method == method and OmegaConf.is_missing(cfg, "method") is False
    assert load_config(method, ["profile=paper"]).profile == "paper"
    get_method(method)


def test_unknown_method_lists_registered(capsys):
    with pytest.raises(KeyError, match="registered methods"):
        get_method("nonexistent")
    assert train_main(["nonexistent"]) == 2
    assert "registered methods" in capsys.readouterr().err


def test_cli_unknown_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main([]) == 0
    assert "train" in capsys.readouterr().out


@pytest.mark.skipif(not METHODS, reason="no method registered yet")
def test_print_config_exits_before_training(capsys):
    method = sorted(METHODS)[0]
    assert train_main([method, "--print-config", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and f"method: {method}" in out
    assert train_main([method, "--print-config", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_a_variant_extends_its_method(experiments):
    (experiments / "big.yaml").write_text("extends: toy\nmodel: {depth: 5}\n")
    (experiments / "bigger.yaml").write_text("extends: big\nprofiles: {paper: {model: {width: 99}}}\n")
    cfg = load_config("big", [], root=experiments)
    assert (cfg.method, cfg.model.width, cfg.model.depth) == ("big", 8, 5)  # toy's cpu profile
    cfg = load_config("bigger", ["profile=paper"], root=experiments)
    assert (cfg.method, cfg.model.width, cfg.model.depth, cfg.data.batch_size) == ("bigger", 99, 5, 128)
    assert "extends" not in cfg
    (experiments / "typo.yaml").write_text("extends: toy\nmodel: {detph: 5}\n")
    with pytest.raises(ConfigError, match="model.detph.*typo.yaml"):
        load_config("typo", [], root=experiments)
    (experiments / "orphan.yaml").write_text("extends: nothing\n")
    with pytest.raises(ConfigError, match=r"no config .*nothing.yaml for .*orphan.yaml \(extends: nothing\)"):
        load_config("orphan", [], root=experiments)
    (experiments / "ping.yaml").write_text("extends: pong\n")
    (experiments / "pong.yaml").write_text("extends: ping\n")
    with pytest.raises(ConfigError, match="`extends` loops"):
        load_config("ping", [], root=experiments)


def test_cgan_is_gan_with_the_switch_and_eval_keys_are_shared():
    assert OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / "cgan.yaml")) == {
        "extends": "gan", "model": {"conditional": True}}
    for profile in ("cpu", "paper"):
        gan, cgan = (OmegaConf.to_container(load_config(m, [f"profile={profile}"]))
                     for m in ("gan", "cgan"))
        assert (gan["model"].pop("conditional"), cgan["model"].pop("conditional")) == (False, True)
        assert (gan.pop("method"), cgan.pop("method")) == ("gan", "cgan")
        assert gan == cgan
    base = OmegaConf.load(EXPERIMENTS / "base.yaml")
    for method in METHOD_FILES:  # one eval block, in base.yaml
        assert "eval" not in OmegaConf.load(EXPERIMENTS / f"{method}.yaml"), method
        assert set(load_config(method, ["profile=cpu"]).eval) == set(base.eval)
