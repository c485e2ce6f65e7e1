"""The contract between methods and evaluation (``voice2face.methods.base``): every
registered method is evaluable through it or explicitly pretraining-only, and the evaluable
ones are measured on a tiny world through its calls alone."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules import VoiceFaceDataModule
from helpers import train_quick
from voice2face.evaluation import evaluate
from voice2face.methods import (METHODS, CheckpointError, Evaluation, MethodModule, Voices,
                                evaluable_methods, generating_methods, load_method)
from voice2face.methods.base import Embeddings, proposal_faces, read_checkpoint_meta
from voice2face.methods.gan import GanModule


@pytest.fixture(scope="module")
def test_batch(world):
    # with the complex STFT too, for the methods whose needs_spectrogram is true
    dm = VoiceFaceDataModule(world, eval_batch_size=8, num_workers=0, spectrogram=True)
    return next(iter(dm.eval_dataloader("test", rank=0, world_size=1)))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_evaluable_or_pretraining_only(name, world, pretrained, test_batch,
                                                       tmp_path):
    cls = METHODS[name]
    assert isinstance(cls.evaluation, Evaluation)
    # trained with the evaluation after training on: it runs exactly for evaluable methods
    final = train_quick(name, world, tmp_path, "trainer.max_steps=2", "run.name=r",
                        "trainer.val_check_interval=100", "run.evaluate=true")
    assert read_checkpoint_meta(final)["method"] == name  # the name it was trained under
    module = load_method(final, expect=name)
    assert module.method == name and module.label.startswith(name)
    post_fit = tmp_path / "r" / "eval" / "metrics.json"
    if cls.evaluation is Evaluation.PRETRAINING:
        assert name not in evaluable_methods() and not post_fit.exists()
        with pytest.raises(CheckpointError, match=f"a checkpoint of method '{name}', expected"):
            evaluate(final, tmp_path / "eval")
        return

    voices = Voices.of(test_batch)
    n, size = len(test_batch["identity"]), test_batch["face"].shape[-1]
    if cls.evaluation is Evaluation.GENERATED_FACES:
        proposal = proposal_faces(test_batch["face"], test_batch["identity"]) if cls.needs_proposal else None
        torch.manual_seed(0)
        faces = module.generate_faces(voices, proposal)
        assert faces.shape == (n, 3, size, size) and faces.abs().max() <= 1
        # generate_faces is faces_from_codes(encode_voices(...)); codes are unit vectors, and
        # several utterances' codes fuse into their renormalised mean
        codes = module.encode_voices(voices)
        assert codes.dim() == 2 and len(codes) == n
        assert torch.allclose(codes.norm(dim=-1), torch.ones(n), atol=1e-4)
        torch.manual_seed(0)
        assert torch.allclose(module.faces_from_codes(codes, proposal), faces, atol=1e-6)
        fused = module.fuse_codes(codes[:3])
        mean = codes[:3].double().mean(0)
        assert fused.shape == (1, codes.shape[1])
        assert torch.allclose(fused[0].double(), mean / mean.norm(), atol=1e-6)
        assert torch.allclose(module.fuse_codes(codes[:1]), codes[:1], atol=1e-6)
        one = module.faces_from_codes(fused, None if proposal is None else proposal[:1])
        assert one.shape == (1, 3, size, size)
    else:
        v, f = module.embed_voices(voices), module.embed_faces(test_batch["face"])
        assert isinstance(v, Embeddings) and v.embedding.shape == f.embedding.shape
        assert torch.allclose(v.embedding.norm(dim=-1), torch.ones(n), atol=1e-4)
    assert (name in generating_methods()) == cls.generates

    saved = json.loads(post_fit.read_text())
    assert saved["method"] == name and saved["label"] == module.label
    row = saved["rows"]["method"]
    assert {"match_1to2", "match_1to2_gender", "recall@1", "gender_acc", "identity_top1"} <= set(row)
    # rates and cosines in [-1, 1]; the Fréchet distance is no rate
    assert all(-1 <= v <= 1 for k, v in row.items() if k != "frechet")
    assert row.get("frechet", 0) >= 0
    assert f"| {module.label} |" in (post_fit.parent / "metrics.md").read_text()
    # the same numbers again from the command's function
    assert evaluate(final, tmp_path / "again")["rows"] == saved["rows"]


def test_a_method_declares_and_implements_what_it_offers():
    with pytest.raises(TypeError, match="declare `evaluation"):
        class Undeclared(MethodModule):
            pass
    with pytest.raises(TypeError, match="needs `embed_faces`"):
        class HalfEmbedder(MethodModule):
            evaluation = Evaluation.OWN_SPACE

            def embed_voices(self, voices):
                return Embeddings(voices.mel.mean(-1))
    with pytest.raises(TypeError, match="needs `generate_faces`: implement `encode_voices` and "
                                        "`faces_from_codes`"):
        class NoFaces(MethodModule):
            evaluation = Evaluation.PRETRAINING
            generates = True
    with pytest.raises(TypeError, match="needs `generate_faces`: implement `faces_from_codes`"):
        class OnlyCodes(MethodModule):  # generate_faces alone cannot fuse several utterances
            evaluation = Evaluation.GENERATED_FACES
            generates = True

            def encode_voices(self, voices):
                return voices.mel.mean(-1)

            def generate_faces(self, voices, proposal=None):
                return torch.zeros(len(voices.mel), 3, 8, 8)
    with pytest.raises(TypeError, match="so generates=True"):
        class Quiet(MethodModule):
            evaluation = Evaluation.GENERATED_FACES

            def generate_faces(self, voices, proposal=None):
                return torch.zeros(len(voices.mel), 3, 8, 8)


def test_proposals_show_another_identity():
    identity = torch.tensor([0, 0, 1, 1, 1, 2])
    faces = torch.arange(6.0)[:, None]  # face i is the number i
    assert proposal_faces(faces, identity).flatten().tolist() == [2, 2, 5, 5, 5, 0]
    with pytest.raises(ValueError, match="two identities"):
        proposal_faces(faces[:2], torch.tensor([3, 3]))


class ProposalGan(GanModule):
    """A GAN that also takes a proposal face (as the CAE will): evaluation must supply one."""

    needs_proposal = True
    proposals: list[torch.Tensor] = []

    def generate_faces(self, voices, proposal=None):
        assert proposal is not None and proposal.shape[0] == voices.mel.shape[0]
        ProposalGan.proposals.append(proposal)
        return (super().generate_faces(voices) + proposal) / 2


def test_a_method_that_needs_a_proposal_gets_one(world, pretrained, tmp_path, monkeypatch):
    final = train_quick("gan", world, tmp_path, "trainer.max_steps=2", "run.name=g",
                        "trainer.val_check_interval=100")
    monkeypatch.setitem(METHODS, "gan", ProposalGan)
    r = evaluate(final, tmp_path / "eval")
    # every test and known utterance was generated with a proposal, and so was each face of
    # the grid's last row (one proposal under the voice of each grid identity, 8 by default)
    seen = sum(len(p) for p in ProposalGan.proposals)
    sweep = min(8, r["counts"]["test_identities"])
    assert seen == r["counts"]["test_utterances"] + r["counts"]["known_utterances"] + sweep
