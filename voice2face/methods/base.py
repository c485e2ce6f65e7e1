"""What every method shares: its config, the facts of its data, its checkpoint identity, and
the contract through which evaluation and generation use it.

The contract (``MethodModule``): a method declares, as class attributes, how it is
measured (``evaluation``, an ``Evaluation``) and whether it makes faces (``generates``,
``needs_proposal``), and implements the calls that go with the declaration:

* ``encode_voices(voices) -> codes`` and ``faces_from_codes(codes, proposal=None) ->
  faces``: ``Evaluation.GENERATED_FACES`` and every method with ``generates = True``; the
  judge then embeds and classifies the faces. ``generate_faces(voices, proposal=None)`` is
  their composition, one face per utterance; ``fuse_codes(codes) -> code`` turns the codes of
  several utterances of one speaker into one (by default their mean, renormalised: the
  codes are unit vectors), which ``voice2face generate`` renders as the speaker's face;
* ``embed_voices(voices)`` and ``embed_faces(faces) -> Embeddings``:
  ``Evaluation.OWN_SPACE``, a method measured in its own shared voice–face space;
* neither: ``Evaluation.PRETRAINING``, a part of other methods (or the judge) that
  ``voice2face evaluate`` does not measure.

Optional, with defaults that do nothing, for every method: ``needs_spectrogram`` (the data
must carry ``Voices.spec``), ``replaceable_parts`` with ``replace_part(name, path)`` (nets
of other methods loaded from their own checkpoints, which ``evaluate``/``generate`` may
replace: ``--decoder``), ``check_ready()`` (raises ``CheckpointError`` when such a part is
missing), ``reference_faces(faces)`` (what the method makes from a real face, for grids),
``extra_metrics(datamodule, device)`` (its own numbers, beside the judge's) and
``cache_utterances()`` (``evaluate`` calls it on the module it loaded for itself, whose
weights then never change, so that a method may keep per-utterance work under
``Voices.keys`` across the evaluation's passes over the same utterances).

A class whose declaration and implementation disagree is an error when it is defined. The
judge's space is reached only through generated faces: a method that embeds voices itself
is measured in its own space, with its own face side (the judge never trains what it
judges). The Controlled AutoEncoder is a ``GeneratorModule`` with ``needs_proposal = True``;
the Speech2Face-style regression predicts a face feature and renders it with a decoder
loaded from its own checkpoint, so it ``generates`` and is measured by its rendered faces,
with its own feature measures (``extra_metrics``) beside them.
``method`` is the registry name the module was trained under (``cgan``), ``variant`` what
distinguishes the run within it, ``label`` both, for tables.

Checkpoints: besides Lightning's entries, ``voice2face`` (the method, the checkpoint format
and the data's facts) and ``nets``, how to rebuild each net the method offers to others
(``exported_nets``) from ``voice2face.nets`` alone: ``{name: {"net": class name in NETS,
"config": constructor arguments, "prefix": where its weights are in the state dict}}``.
``methods.pretrained`` loads frozen nets through it, never through another method's module;
``voice2face upgrade`` writes it into a checkpoint saved before it existed.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import lightning as L
import torch
from torch import Tensor

from voice2face.errors import UserError
from voice2face.nets import NETS, faces_channels_last

CHECKPOINT_FORMAT = 1


def data_info(datamodule) -> dict[str, Any]:
    """The facts of a dataset that a method sizes its nets by and its checkpoint records."""
    table = [(i["index"], i["name"], i["split"]) for i in datamodule.identities]
    fingerprint = hashlib.sha1(json.dumps(table, ensure_ascii=False).encode()).hexdigest()[:16]
    return {"root": str(datamodule.root), "num_train_identities": datamodule.num_train_identities,
            "face_size": datamodule.face_size, "fingerprint": fingerprint,
            "kind": datamodule.manifest.get("kind", "unknown")}


# --- the contract ------------------------------------------------------------------------------

class Evaluation(enum.Enum):
    """How ``voice2face evaluate`` (and the evaluation after training) measures a method."""

    PRETRAINING = "pretraining only"      # trains a part of other methods: nothing to measure
    GENERATED_FACES = "generated faces"   # generate_faces; the judge embeds and classifies them
    OWN_SPACE = "own space"               # embed_voices / embed_faces in the method's own space


class Voices(NamedTuple):
    """A batch of utterances as the methods read them (``datamodules.features``)."""

    mel: Tensor                    # [B, n_mels, T] log-mel, zero-padded (the nets normalise)
    lengths: Tensor | None = None  # [B] valid frames; None: all T
    # [B, F, T] complex STFT on the same frames, for a method whose ``needs_spectrogram``
    # is true (the data then carries it); None otherwise
    spec: Tensor | None = None
    # the utterances' sample keys when they come from the data (``Voices.of``): what a
    # method may keep per-utterance work under during an evaluation (``cache_utterances``)
    keys: tuple[str, ...] | None = None

    @classmethod
    def of(cls, batch: Mapping[str, Any]) -> Voices:
        keys = tuple(batch["key"]) if "key" in batch else None
        return cls(batch["mel"], batch.get("mel_lengths"), batch.get("spec"), keys)

    def to(self, device: torch.device | str) -> Voices:
        return self._replace(**{name: getattr(self, name).to(device)
                                for name in ("mel", "lengths", "spec")
                                if getattr(self, name) is not None})


@dataclass
class Embeddings:
    """Unit embeddings in one stated space, with the predictions a method may add."""

    embedding: Tensor                # [B, D], unit L2 norm
    gender: Tensor | None = None     # [B] logit of male
    identity: Tensor | None = None   # [B, training identities] logits

    @classmethod
    def of(cls, out: Mapping[str, Tensor]) -> Embeddings:
        """From a net's ``{embedding, gender?, identity?}`` dict (``FaceEncoder``, heads)."""
        return cls(out["embedding"], out.get("gender"), out.get("identity"))


def proposal_faces(faces: Tensor, identity: Tensor) -> Tensor:
    """The proposals a method with ``needs_proposal`` gets in validation and evaluation:
    for each utterance, the real face of the nearest later sample of the batch (cyclically)
    that belongs to another identity, so no proposal shows the speaker. Deterministic, like
    the data order it is drawn from."""
    n = len(identity)
    shift = torch.arange(1, n, device=identity.device)
    rows = (torch.arange(n, device=identity.device)[:, None] + shift) % n  # [n, n-1] candidates
    other = identity[rows] != identity[:, None]
    if n < 2 or not other.any(1).all():
        raise ValueError("a proposal face needs a batch with at least two identities")
    return faces[rows[torch.arange(n), other.int().argmax(1)]]


class MethodModule(L.LightningModule):
    """Base LightningModule of the suite.

    Subclasses are built as ``Cls(cfg, data)``: ``cfg`` is the whole resolved config as a
    plain dict (``cfg["model"]``, ``cfg["optim"]``, ``cfg["method"]``, ...), ``data`` is
    ``data_info(dm)``. Both are saved as hyperparameters, so ``load_method`` rebuilds the
    module from a checkpoint alone.
    """

    # how evaluation measures the method; every method class states it
    evaluation: ClassVar[Evaluation]
    # generate_faces is implemented (``voice2face generate`` accepts the method)
    generates: ClassVar[bool] = False
    # generate_faces needs a proposal face per voice (a face it morphs toward the voice)
    needs_proposal: ClassVar[bool] = False
    # optimizer steps per training batch: Lightning's global_step counts each of them
    steps_per_batch: ClassVar[int] = 1
    # val_dataloader returns [samples, gallery] for methods that embed real faces there
    val_gallery: ClassVar[bool] = False
    # nets trained by other methods that this one loads, frozen, from their own checkpoints
    # and that evaluation and generation may replace (``--decoder PATH``), by name
    replaceable_parts: ClassVar[tuple[str, ...]] = ()
    # attributes holding pretrained, frozen nets (None where a run has none): ``train()``
    # leaves them in eval mode, so their BatchNorm statistics stay the pretrained ones
    frozen_nets: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        """Checks that a method class declares what it offers and implements it (a base
        class that leaves the calls to its subclasses says ``abstract=True``)."""
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        evaluation = getattr(cls, "evaluation", None)
        if not isinstance(evaluation, Evaluation):
            raise TypeError(f"{cls.__name__}: declare `evaluation = Evaluation.<...>` "
                            f"(PRETRAINING for a method that evaluation does not measure)")
        if evaluation is Evaluation.GENERATED_FACES and not cls.generates:
            raise TypeError(f"{cls.__name__}: evaluated by its generated faces, so generates=True")
        declared = f"{cls.__name__}: evaluation={evaluation.name}, generates={cls.generates}"
        if cls.generates:
            # generate_faces is the composition of the two calls that make fusing possible
            missing = [c for c in ("encode_voices", "faces_from_codes")
                       if getattr(cls, c) is getattr(MethodModule, c)]
            if missing:
                raise TypeError(f"{declared} needs `generate_faces`: implement "
                                f"{' and '.join(f'`{c}`' for c in missing)} (generate_faces "
                                f"is faces_from_codes(encode_voices(voices)))")
        for call in ("embed_voices", "embed_faces"):
            if evaluation is Evaluation.OWN_SPACE and getattr(cls, call) is getattr(MethodModule, call):
                raise TypeError(f"{declared} needs `{call}`")
        if cls.replaceable_parts and cls.replace_part is MethodModule.replace_part:
            raise TypeError(f"{cls.__name__}: replaceable_parts={cls.replaceable_parts} needs "
                            f"`replace_part`")

    def __init__(self, cfg: dict[str, Any], data: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "data": data})
        self.cfg, self.data_info = cfg, data

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen_nets:
            if getattr(self, name, None) is not None:
                getattr(self, name).eval()
        return self

    # --- where the batch lands -------------------------------------------------------------

    @property
    def channels_last(self) -> bool:
        """``model.channels_last`` (the default; false: contiguous memory): the face nets' 4-D
        weights and the batch's faces in NHWC memory (``voice2face/nets/layout.py``); a
        checkpoint from before the key trained without."""
        return bool(self.cfg["model"].get("channels_last", False))

    def configure_model(self) -> None:
        if self.channels_last:  # 1-D voice nets, linear layers and norms keep their layout
            self.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``data.features=device``: the batch's waveform crops become log-mel (and STFT)
        here, on the accelerator, in fp32 (``datamodules.features.device_features``; docs/
        data.md says why); batches with features already (``worker``, evaluation) pass.
        Then the faces go channels-last where the method's nets are."""
        from datamodules.features import device_features
        batch = device_features(batch, spectrogram=self.needs_spectrogram)
        return faces_channels_last(batch) if self.channels_last else batch

    # --- identity ------------------------------------------------------------------------

    @property
    def method(self) -> str:
        """The registry name the module was trained under (``voice2face train <method>``)."""
        return self.cfg["method"]

    @property
    def variant(self) -> str | None:
        """What sets this run apart within its method, for tables; None: nothing."""
        return None

    @property
    def label(self) -> str:
        return self.method + (f" ({self.variant})" if self.variant else "")

    # --- what evaluation and generation call -------------------------------------------------

    def generate_faces(self, voices: Voices, proposal: Tensor | None = None) -> Tensor:
        """Faces ``[B, 3, S, S]`` in [-1, 1], one per utterance. ``proposal``: ``[B, 3, S, S]``
        real faces, given exactly when the class has ``needs_proposal``. A method that draws
        noise draws it from the global RNG: seed it for the same faces."""
        return self.faces_from_codes(self.encode_voices(voices), proposal)

    def encode_voices(self, voices: Voices) -> Tensor:
        """The code ``[B, D]`` the method makes a face from, one per utterance (a method that
        ``generates``): what ``fuse_codes`` averages over the utterances of one speaker."""
        raise NotImplementedError(f"{self.method} does not generate faces")

    def faces_from_codes(self, codes: Tensor, proposal: Tensor | None = None) -> Tensor:
        """Faces ``[B, 3, S, S]`` from codes ``[B, D]`` of ``encode_voices`` (or of
        ``fuse_codes``); ``proposal`` and noise as in ``generate_faces``."""
        raise NotImplementedError(f"{self.method} does not generate faces")

    def fuse_codes(self, codes: Tensor) -> Tensor:
        """One code ``[1, D]`` from the codes ``[N, D]`` of N utterances of one speaker (the
        papers' averaging of several utterances' embeddings). By default the mean,
        renormalised to unit length, for methods whose codes are unit vectors (all of ours);
        a method whose codes live elsewhere overrides it."""
        if codes.dim() != 2 or not len(codes):
            raise ValueError(f"fuse_codes takes codes [N, D] of N >= 1 utterances, got "
                             f"{tuple(codes.shape)}")
        return torch.nn.functional.normalize(codes.mean(0, keepdim=True), dim=-1)

    def embed_voices(self, voices: Voices) -> Embeddings:
        """The voices in the method's own space (``Evaluation.OWN_SPACE``)."""
        raise NotImplementedError(f"{self.method} does not embed voices")

    def embed_faces(self, faces: Tensor) -> Embeddings:
        """Real faces in the same space as ``embed_voices`` (the gallery of evaluation)."""
        raise NotImplementedError(f"{self.method} does not embed faces")

    @classmethod
    def reads_training_audio(cls, cfg: dict[str, Any]) -> bool:
        """Whether training batches must carry the utterances (``mel``); false for a method
        that reads cached voice embeddings (or none) in training. Evaluation batches always
        carry them."""
        return True

    def reference_faces(self, faces: Tensor) -> Tensor | None:
        """Faces the method makes from real faces ``[B, 3, S, S]`` alone, shown beside them
        in sample grids (a decoder's rendering of the face's own feature: what the method
        could render at best); None: the method makes none."""
        return None

    @property
    def needs_spectrogram(self) -> bool:
        """``Voices.spec`` is read: the data must carry the complex STFT (``spectrogram``)."""
        return False

    def replace_part(self, name: str, path: str | Path) -> None:
        """Load the part ``name`` (one of ``replaceable_parts``) from the checkpoint ``path``
        instead of the one the method was trained with, or without."""
        raise CheckpointError(f"{self.label} has no replaceable part {name!r} "
                              f"(it has: {', '.join(self.replaceable_parts) or 'none'})")

    def check_ready(self) -> None:
        """Raise ``CheckpointError`` if a call of the contract lacks something it needs (a
        part the method was trained without); evaluation and generation ask first."""

    def extra_metrics(self, datamodule, device: torch.device | str) -> dict[str, float]:
        """The method's own measures on the test data of ``datamodule`` (a
        ``VoiceFaceDataModule``), beside the judge's: ``{name: value}``, which ``voice2face
        evaluate`` writes under ``extra``; none by default."""
        return {}

    def cache_utterances(self) -> None:
        """From now on the weights do not change: the method may keep work per utterance
        (``Voices.keys``) and reuse it when the same utterances come again. ``evaluate``
        calls it on the module it loaded for itself; nothing is kept by default."""

    # --- checkpoints -----------------------------------------------------------------------

    def exported_nets(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """The nets other methods and evaluation load from this method's checkpoints: name ->
        (the net's attribute path in this module, its constructor's arguments); none by
        default."""
        return {}

    def net_descriptions(self) -> dict[str, dict[str, Any]]:
        """The checkpoint's ``nets`` entry (module docstring) of ``exported_nets``."""
        out = {}
        for name, (attribute, config) in self.exported_nets().items():
            net = self.get_submodule(attribute)
            if NETS.get(type(net).__name__) is not type(net):
                raise TypeError(f"{self.method}: exported net {name!r} is a {type(net).__name__}, "
                                f"which voice2face.nets.NETS does not list")
            out[name] = {"net": type(net).__name__, "config": dict(config),
                         "prefix": f"{attribute}."}
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["voice2face"] = {"method": self.method, "format": CHECKPOINT_FORMAT,
                                    "data": self.data_info}
        checkpoint["nets"] = self.net_descriptions()


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable, or not of the expected method or data."""


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``voice2face`` entry: its method, format and data."""
    return read_checkpoint(path)["voice2face"]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The whole checkpoint (tensors memory-mapped), an error unless it is a voice2face one."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; expected a .ckpt file (a run "
                              f"folder keeps them in {path / 'checkpoints'}/)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    meta = ckpt.get("voice2face") if isinstance(ckpt, dict) else None
    if meta is None or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a voice2face checkpoint (format {CHECKPOINT_FORMAT}); "
                              f"found keys {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt)}")
    return ckpt


def load_module(path: str | Path, classes: Mapping[str, type[MethodModule]],
                map_location: str = "cpu") -> MethodModule:
    """The trained module (eval mode) of a checkpoint whose method is one of ``classes``
    (registry name -> class); ``methods.load_method`` asks the whole registry."""
    method = read_checkpoint_meta(path)["method"]
    if method not in classes:
        raise CheckpointError(f"{path}: a checkpoint of method {method!r}, expected "
                              f"{' or '.join(map(repr, classes))}")
    module = classes[method].load_from_checkpoint(path, map_location=map_location)
    module.eval()
    return module
