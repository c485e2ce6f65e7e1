"""The registry of methods: ``voice2face train <name>`` builds ``METHODS[name]``.

Adding a method: a module here (a ``MethodModule`` that declares its ``evaluation``), its
``experiments/<name>.yaml`` and a line below. A variant of a method is a config that
``extends`` the method's, registered with the same class: its checkpoints carry its name.
"""

from __future__ import annotations

from pathlib import Path

from voice2face.methods.base import (CheckpointError, Embeddings, Evaluation, MethodModule,
                                     Voices, load_module, read_checkpoint_meta)
from voice2face.methods.cae import CaeModule
from voice2face.methods.dimnet import DimnetModule
from voice2face.methods.face import FaceModule
from voice2face.methods.face_decoder import FaceDecoderModule
from voice2face.methods.gan import GanModule
from voice2face.methods.regression import RegressionModule
from voice2face.methods.voice import VoiceModule

METHODS: dict[str, type[MethodModule]] = {
    "voice": VoiceModule,    # pretraining: speaker-recognition voice embedder
    "dimnet": DimnetModule,  # pretraining / baseline: DIMNet voice and face embedders
    "face": FaceModule,      # pretraining: face-identity encoder, the evaluation judge
    "gan": GanModule,        # Wen et al. 2019
    "cgan": GanModule,       # its conditional variant (experiments/cgan.yaml extends gan.yaml)
    "cae": CaeModule,        # Liang et al. 2020, the Controlled AutoEncoder
    "cae-concat": CaeModule,  # its ablation: voice concatenated at the bottleneck, no gating
    "face_decoder": FaceDecoderModule,  # pretraining: renders face features (Speech2Face family)
    "regression": RegressionModule,     # Oh et al. 2019: voice -> face feature -> decoder
}


def get_method(name: str) -> type[MethodModule]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def evaluable_methods() -> tuple[str, ...]:
    """The registered methods that ``voice2face evaluate`` measures."""
    return tuple(sorted(n for n, c in METHODS.items() if c.evaluation is not Evaluation.PRETRAINING))


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


__all__ = ["METHODS", "CheckpointError", "Embeddings", "Evaluation", "MethodModule", "Voices",
           "evaluable_methods", "generating_methods", "get_method", "load_method"]
