"""The registry of methods: one ``MethodSpec`` per name; ``voice2face train <name>`` builds
``METHODS[name]``.

A spec holds what the rest of the suite needs to know of a method besides its class: the rows
it contributes to ``voice2face results`` (its variants), whether evaluation's judge must
exist before it trains, and, derived from the files that already say it, the pretrained nets
its config names (``pretrained_needs``) and whether it has a sweep. make asks the same facts
through ``python -m voice2face.registry``; the tests and benchmarks read them here.

Adding a method: a module here (a ``MethodModule`` that declares its ``evaluation``), its
``experiments/<name>.yaml`` and a spec below. A variant of a method is a config that
``extends`` the method's, registered with the same class: its checkpoints carry its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from voice2face.config import experiments_dir, load_config, string_leaves
from voice2face.constants import PRETRAINED_DIR
from voice2face.losses import FEATURE_LOSSES
from voice2face.methods.base import (CheckpointError, Embeddings, Evaluation, MethodModule,
                                     Voices, load_module, read_checkpoint_meta)
from voice2face.methods.cae import CaeModule
from voice2face.methods.dimnet import DimnetModule
from voice2face.methods.face import FaceModule
from voice2face.methods.face_decoder import FaceDecoderModule
from voice2face.methods.gan import GanModule
from voice2face.methods.regression import RegressionModule
from voice2face.methods.voice import VoiceModule
from voice2face.nets.cae import GATINGS


@dataclass(frozen=True)
class MethodSpec:
    """A registered method."""

    name: str
    cls: type[MethodModule]
    about: str
    # results rows: config key -> the values that each make a row (one row when empty)
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # the judge must exist before training even though the method is not evaluated
    # (face_decoder refuses a target with the judge's weights)
    checked_against_judge: bool = False

    @property
    def evaluable(self) -> bool:
        return self.cls.evaluation is not Evaluation.PRETRAINING

    @property
    def needs_judge(self) -> bool:
        return self.evaluable or self.checked_against_judge

    @property
    def sweep(self) -> Path | None:
        """Its W&B sweep file, if it has one."""
        path = experiments_dir() / "sweeps" / f"{self.name}.yaml"
        return path if path.is_file() else None

    def rows(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(row name, overrides)`` of each results row of this method."""
        if not self.variants:
            return [(self.name, ())]
        return [(f"{self.name}-{value}", (f"{key}={value}",))
                for key, values in self.variants.items() for value in values]


_SPECS = [  # results rows and the README's table list them in this order
    MethodSpec("gan", GanModule, "the voice-to-face GAN of Wen, Singh & Raj (NeurIPS 2019)"),
    MethodSpec("cgan", GanModule, "its conditional variant: noise z and a projection "
               "discriminator; on the cpu profile z is encoded from the real face in training "
               "(cVAE-GAN)"),
    MethodSpec("cae", CaeModule, "the Controlled AutoEncoder of Liang et al. (2020): a proposal "
               "face morphed toward the speaker by a U-Net with voice-gated decoder filters; "
               "`model.gating` is the variant",
               variants={"model.gating": tuple(g for g in GATINGS if g != "concat")}),
    MethodSpec("cae-concat", CaeModule, "its ablation: the same U-Net conditioned by "
               "concatenating the voice embedding at the bottleneck"),
    MethodSpec("regression", RegressionModule, "Speech2Face (Oh et al., CVPR 2019): a voice "
               "encoder regresses a face network's feature, a face decoder renders it; "
               "`model.loss` is the variant",
               variants={"model.loss": tuple(FEATURE_LOSSES)}),
    MethodSpec("dimnet", DimnetModule, "DIMNet: voice and face embedders through shared identity "
               "and gender classifiers, measured in its own space"),
    MethodSpec("voice", VoiceModule, "speaker-recognition voice embedder (Wen et al. 2019, "
               "Table 2), identity cross-entropy"),
    MethodSpec("face", FaceModule, "face-identity encoder with identity and gender heads (and, "
               "on a synthetic world, a head regressing its hidden attributes): the evaluation "
               "**judge**"),
    MethodSpec("face_decoder", FaceDecoderModule, "renders a face-identity network's feature as "
               "a face (the regression's decoder)", checked_against_judge=True),
]
SPECS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
METHODS: dict[str, type[MethodModule]] = {s.name: s.cls for s in _SPECS}

# The pretrained nets make builds into DATA/pretrained/: file stem -> (method, overrides) of the
# run that makes it. face-target is the regression's target: trained like the judge but from
# another seed, so that it is not the network that measures it (the methods refuse the
# judge's weights as a target), and for identity and gender only: a world's hidden attributes
# are the instrument's, and real data has no such labels.
PRETRAINED: dict[str, tuple[str, tuple[str, ...]]] = {
    "voice": ("voice", ()),
    "dimnet": ("dimnet", ()),
    "face": ("face", ()),
    "face-target": ("face", ("seed=1", "model.attribute_weight=0")),
    "decoder": ("face_decoder", ()),
}


def pretrained_needs(method: str, profile: str, overrides: list[str] | tuple[str, ...] = ()
                     ) -> list[str]:
    """The stems of the pretrained nets (``PRETRAINED``) that ``method`` needs before it trains
    under ``profile``: the ones its config names, then the judge. Read from the config, so a
    profile that names another voice embedder needs that one."""
    root = "/@data@"  # a marker root: the paths under its pretrained folder are the ones make builds
    cfg = load_config(method, [f"data.root={root}", f"profile={profile}", *overrides])
    folder = f"{root}/{PRETRAINED_DIR}/"
    named = string_leaves(OmegaConf.to_container(cfg.model, resolve=True))
    if SPECS[method].needs_judge:
        named.append(str(cfg.eval.judge))
    stems = [Path(p).name.removesuffix(".ckpt") for p in named if p.startswith(folder)]
    return list(dict.fromkeys(s for s in stems if s in PRETRAINED))


def get_method(name: str) -> type[MethodModule]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def evaluable_methods() -> tuple[str, ...]:
    """The registered methods that ``voice2face evaluate`` measures."""
    return tuple(sorted(n for n, s in SPECS.items() if s.evaluable))


def generating_methods() -> tuple[str, ...]:
    """The registered methods that ``voice2face generate`` accepts."""
    return tuple(sorted(n for n, c in METHODS.items() if c.generates))


def load_method(path: str | Path, expect: str | tuple[str, ...] | None = None,
                map_location: str = "cpu") -> MethodModule:
    """The trained module of a checkpoint; ``expect`` names the method(s) it must be."""
    method = read_checkpoint_meta(path)["method"]
    expected = (expect,) if isinstance(expect, str) else expect
    if expected and method not in expected:
        raise CheckpointError(f"{path}: a checkpoint of method {method!r}, expected "
                              f"{' or '.join(map(repr, expected))}")
    if method not in METHODS:
        raise CheckpointError(f"{path}: method {method!r} is not registered ({sorted(METHODS)})")
    return load_module(path, METHODS, map_location)


__all__ = ["METHODS", "PRETRAINED", "SPECS", "CheckpointError", "MethodSpec", "pretrained_needs", "Embeddings", "Evaluation", "MethodModule", "Voices",
           "evaluable_methods", "generating_methods", "get_method", "load_method"]
