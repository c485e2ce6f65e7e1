"""The registry of methods: ``voice2face train <name>`` builds ``METHODS[name]``."""

from voice2face.methods.base import MethodModule, load_method
from voice2face.methods.dimnet import DimnetModule
from voice2face.methods.face import FaceModule
from voice2face.methods.gan import GanModule
from voice2face.methods.voice import VoiceModule

METHODS: dict[str, type[MethodModule]] = {
    "voice": VoiceModule,    # pretraining: speaker-recognition voice embedder
    "dimnet": DimnetModule,  # pretraining / baseline: DIMNet voice and face embedders
    "face": FaceModule,      # pretraining: face-identity encoder, the evaluation judge
    "gan": GanModule,        # Wen et al. 2019
    "cgan": GanModule,       # the same module with model.conditional=true (experiments/cgan.yaml)
}


def get_method(name: str) -> type[MethodModule]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "MethodModule", "get_method", "load_method"]
