"""Configs: ``experiments/base.yaml`` <- ``experiments/<method>.yaml`` <- profile <- CLI.

A method file may hold ``profiles: {cpu: {...}, paper: {...}}``; ``profile=auto`` picks
``paper`` when a GPU is present and ``cpu`` otherwise. Command-line overrides are
``key=value`` (the form W&B sweeps emit with ``${args_no_hyphens}``). The merged config is
in struct mode, so a key that no layer defines is an error that names it, and typed: a
value's type is declared by its default (``DECLARED_TYPES`` where the default is null or
several types are accepted), so ``trainer.max_steps=abc`` is an error that names the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import (AnyNode, BooleanNode, DictConfig, FloatNode, IntegerNode, OmegaConf,
                       StringNode)
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from voice2face.errors import UserError

EXPERIMENTS = Path(os.environ.get("VOICE2FACE_EXPERIMENTS",
                                  Path(__file__).resolve().parent.parent / "experiments"))


class ConfigError(UserError, ValueError):
    """A config file or override is not valid."""


# Keys whose default does not show their type: null defaults, and trainer.devices, which
# Lightning takes as a count, "auto" or a list of device indices.
DECLARED_TYPES: dict[str, type] = {
    "run.name": str, "run.resume": str, "logger.entity": str,
    "trainer.gradient_clip_val": float, "optim.clip_grad": float, "trainer.devices": Any,
    "model.hidden": int, "model.eval_max_seconds": float, "model.target": str,
    "model.voice": str,
}

# The range of every numeric key that has one, checked after the merge: (lowest, whether the
# lowest itself is allowed). A key ending in one of RANGE_SUFFIXES gets that suffix's range
# (every `*width` is a channel multiplier > 0). Null still means "not set".
RANGES: dict[str, tuple[float, bool]] = {
    "data.batch_size": (1, True), "data.eval_batch_size": (1, True),
    "data.num_workers": (0, True), "data.crop_seconds": (0, False),
    "data.shuffle_buffer": (1, True), "trainer.max_steps": (1, True),
    "trainer.val_check_interval": (1, True), "trainer.log_every_n_steps": (1, True),
    "trainer.num_nodes": (1, True), "run.checkpoint_every": (1, True),
    "eval.grid_identities": (0, True), "eval.grid_utterances": (1, True),
    "optim.lr": (0, False), "trainer.gradient_clip_val": (0, False), "optim.clip_grad": (0, False),
    "model.hidden": (1, True), "model.eval_max_seconds": (0, False), "model.dim": (1, True),
    "model.embedding_noise": (0, True), "model.ema_decay": (0, True),
}
RANGE_SUFFIXES: dict[str, tuple[float, bool]] = {"width": (0, False), "_weight": (0, True)}


def leaves(tree, prefix: str = "") -> dict[str, Any]:
    """``{dotted.key: value}`` of a plain config tree (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def string_leaves(tree) -> list[str]:
    """Every non-empty string of a plain config tree, in lists too (the paths it names)."""
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in string_leaves(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in string_leaves(v)]
    return [tree] if isinstance(tree, str) and tree else []


def check_ranges(cfg: DictConfig) -> None:
    """``ConfigError`` naming the first key whose value is out of its declared range."""
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)).items():
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        bound = RANGES.get(key) or next((r for s, r in RANGE_SUFFIXES.items()
                                         if key.rsplit(".", 1)[-1].endswith(s)), None)
        if bound is None:
            continue
        low, inclusive = bound
        if value < low or (value == low and not inclusive):
            expected = f">= {low:g}" if inclusive else f"> {low:g}"
            raise ConfigError(f"{key}={value}: out of range, expected {expected}")
_NODES = {bool: BooleanNode, int: IntegerNode, float: FloatNode, str: StringNode}


def experiments_dir() -> Path:
    if not EXPERIMENTS.is_dir():
        raise ConfigError(f"config folder {EXPERIMENTS} not found: run from a clone of the "
                          f"repository or set VOICE2FACE_EXPERIMENTS")
    return EXPERIMENTS


def _load(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return cfg


def _parse_overrides(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    try:
        return OmegaConf.from_dotlist([o.lstrip("-") for o in overrides])
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as e:  # a value yaml cannot read
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot parse overrides {overrides}: {first}") from None


def _typed(value: Any, key: str = "") -> Any:
    """The config tree with each leaf in an OmegaConf typed node of its declared type, so
    that merging a value of another type raises ``ValidationError`` naming the key."""
    if isinstance(value, dict):
        return {k: _typed(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    kind = DECLARED_TYPES.get(key, type(value))
    if isinstance(value, str) and "${" in value:  # an interpolation: typed by its target
        kind = Any
    node = _NODES.get(kind)
    # lists, interpolations and null defaults without a declaration take any value;
    # null is always accepted (it means "not set")
    return AnyNode(value) if node is None and not isinstance(value, list) else (
        value if node is None else node(value, is_optional=True))


def _merge_strict(cfg: DictConfig, layer: DictConfig, what: str) -> DictConfig:
    OmegaConf.set_struct(cfg, True)
    try:
        return OmegaConf.merge(cfg, layer)
    except ConfigKeyError as e:
        key = e.full_key or e.key
        raise ConfigError(f"unknown config key {key!r} in {what}; "
                          f"see `voice2face train <method> --print-config` for valid keys") from e
    except ValidationError as e:  # the typed node's own message: what the value should be
        raise ConfigError(f"{e.full_key or e.key}: invalid value in {what}: "
                          f"{str(e.msg).splitlines()[0]}") from e
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid value in {what}: {e}") from e


def resolve_profile(name: str) -> str:
    """``auto``: the hardware's profile (``voice2face.hardware``: the one decision, which make
    asks too); a GPU that torch cannot use is refused rather than run as ``cpu``."""
    if name != "auto":
        return name
    from voice2face.hardware import UnusableGPU, auto_profile
    try:
        return auto_profile()
    except UnusableGPU as e:
        raise ConfigError(f"profile=auto: {e}") from None


def _method_layers(method: str, root: Path) -> list[tuple[Path, DictConfig]]:
    """The method's file and, first, the files it extends (``extends: <method>``)."""
    chain: list[tuple[Path, DictConfig]] = []
    name: str | None = method
    while name is not None:
        path = root / f"{name}.yaml"
        if not path.is_file():
            what = f"method {method!r}" if name == method else f"{chain[0][0]} (extends: {name})"
            raise ConfigError(f"no config {path} for {what}")
        if any(p == path for p, _ in chain):
            raise ConfigError(f"{path}: `extends` loops ({' -> '.join(p.stem for p, _ in chain)} "
                              f"-> {name})")
        layer = _load(path)
        name = layer.pop("extends", None)
        chain.insert(0, (path, layer))
    return chain


def load_config(method: str, overrides: list[str] | None = None,
                root: Path | None = None) -> DictConfig:
    """The merged, struct-mode config of ``method`` with ``key=value`` overrides applied.

    A method file may start with ``extends: <method>``: it is that method's config with the
    keys it sets changed (a variant, e.g. ``cgan`` is ``gan`` with ``model.conditional``); it
    may not add keys, so a misspelt one is an error. Its profiles may set keys that the
    method's profile of that name does not (the cgan's ``cpu`` profile encodes its noise):
    they are checked, like every profile's, when the profile is applied.
    """
    root = root or experiments_dir()
    (method_file, own), *variants = _method_layers(method, root)
    cli = _parse_overrides(list(overrides or []))
    # a method file adds its own keys (model, optim, ...); later layers may only set them
    cfg = OmegaConf.merge(_load(root / "base.yaml"), own)
    for path, layer in variants:
        OmegaConf.set_struct(layer, False)
        own_profiles = layer.pop("profiles", None)
        cfg = _merge_strict(cfg, layer, str(path))
        if own_profiles is not None:
            OmegaConf.set_struct(cfg, False)
            cfg.profiles = OmegaConf.merge(cfg.get("profiles") or {}, own_profiles)
        method_file = path
    # the defaults declare the types; the profile and the command line are checked against them
    cfg = OmegaConf.create(_typed(OmegaConf.to_container(cfg, resolve=False)))
    OmegaConf.set_struct(cfg, False)  # to take the profiles out
    profiles = cfg.pop("profiles", None) or {}
    profile = resolve_profile(str(cli.get("profile", cfg.get("profile", "auto"))))
    if profile not in profiles and profiles:
        raise ConfigError(f"{method_file}: no profile {profile!r}; it has {sorted(profiles)}")
    if profile in profiles:
        cfg = _merge_strict(cfg, profiles[profile], f"{method_file} profile {profile!r}")
    cfg = _merge_strict(cfg, cli, "command-line overrides")
    cfg.profile = profile
    cfg.method = method
    OmegaConf.resolve(cfg)
    OmegaConf.set_struct(cfg, True)
    check_ranges(cfg)
    return cfg


def save_config(cfg: DictConfig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg))
    os.replace(tmp, path)
