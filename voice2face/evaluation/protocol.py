"""The protocol's steps, each a function of the data, the method and the metric rows it fills.

A row is ``make_metrics``' ``{group: MetricCollection}`` for one set of probes (the method's,
the unchanged proposals', the real faces'); each step updates rows or returns what it
measured, and ``evaluation.run.evaluate`` calls them in order. The order of the passes over
the data is part of the protocol: a conditional GAN draws its z from the seeded generator,
so the same seed gives the same numbers only when the passes come in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from voice2face.grid import GridCollector
from voice2face.methods import (CheckpointError, Embeddings, Evaluation, MethodModule, Voices,
                                evaluable_methods, load_method)
from voice2face.methods.base import proposal_faces
from voice2face.methods.pretrained import judge_faces, load_judge
from voice2face.metrics import (FeatureFrechetDistance, compute_each, gallery_chance,
                                gallery_hits, make_metrics, sampled_galleries)

TOP_K = (1, 5, 10, 20, 50)
BLOCK = 100  # SF2F's recall blocks of 100 identities, when the split has that many
# Liang et al.'s face retrieval: the speaker among the top RETRIEVAL_K of RETRIEVAL_GALLERY
RETRIEVAL_GALLERY, RETRIEVAL_K = 500, 5
RETRIEVAL_KEY = f"retrieval_top{RETRIEVAL_K}"
# one process: evaluation reads every sample itself, even on rank 0 after a DDP fit
LOADER = dict(rank=0, world_size=1)

Row = torch.nn.ModuleDict  # make_metrics' groups of one row


# --- the method under test, through its contract (methods.base) -----------------------------

class Subject:
    """A method in the space its probes are measured in: the judge's, for the faces it
    generates, or its own (``Evaluation.OWN_SPACE``)."""

    def __init__(self, method: MethodModule, judge):
        self.method, self.judge = method, judge
        self.judged = method.evaluation is Evaluation.GENERATED_FACES

    @torch.no_grad()
    def voices(self, batch: dict, device) -> tuple[Tensor | None, Embeddings, Tensor | None]:
        """(generated faces or None, the probes' embeddings and predictions, the proposal
        faces or None)."""
        voices = Voices.of(batch).to(device)
        if self.judged:
            proposal = (proposal_faces(batch["face"], batch["identity"]).to(device)
                        if self.method.needs_proposal else None)
            faces = self.method.generate_faces(voices, proposal)
            return faces, judge_faces(self.judge, faces), proposal
        return None, self.method.embed_voices(voices), None

    @torch.no_grad()
    def faces(self, face: Tensor) -> Tensor:
        """Gallery embeddings in the probes' space."""
        return self.judge.embed(face) if self.judged else self.method.embed_faces(face).embedding


def load_evaluated(ckpt: str | Path, parts: dict[str, str | Path] | None) -> MethodModule:
    """The method of ``ckpt``, its ``parts`` replaced (``replace_part``), ready to measure."""
    method = load_method(ckpt, expect=evaluable_methods())
    for name, path in (parts or {}).items():
        method.replace_part(name, path)
    method.check_ready()
    method.cache_utterances()  # loaded for this evaluation alone: its weights stay as they are
    return method


def load_judge_of(path: Path, data: Path, info: dict[str, Any]):
    """The judge at ``path``, or a ``CheckpointError`` that says how to make one."""
    if not path.is_file():
        raise CheckpointError(f"no judge at {path}: evaluation embeds faces with a `face` "
                              f"checkpoint trained on {data}; make one with `voice2face train "
                              f"face data.root={data} --export {path}` or pass --judge")
    return load_judge(path, info)


def check_data(ckpt, trained_on: dict[str, Any], data: dict[str, Any], allow: bool,
               log, own_root: bool = False) -> None:
    """The data evaluated must be the checkpoint's (the fingerprint of its identity table),
    or be allowed; a face size the method does not make is never allowed. ``own_root``: the
    data is the folder the checkpoint was trained in (which now holds other data)."""
    if trained_on.get("fingerprint") == data["fingerprint"]:
        return
    what = (f"{ckpt} was trained on {trained_on.get('root')} (identity table "
            f"{trained_on.get('fingerprint')}), and {data['root']} holds other data (identity "
            f"table {data['fingerprint']})")
    if trained_on.get("face_size", data["face_size"]) != data["face_size"]:
        raise CheckpointError(f"{what} of {data['face_size']}-pixel faces, where the method "
                              f"makes {trained_on['face_size']}-pixel ones: it cannot be "
                              f"evaluated on it")
    if not allow:
        fix = ("pass --data with the data it was trained on" if own_root
               else "evaluate it on its own data (leave out --data)")
        raise CheckpointError(f"{what}: {fix}, or pass --allow-other-data to measure it on "
                              f"this data")
    log(f"voice2face evaluate: {what}; evaluating on it as --allow-other-data asks")


# --- the grid --------------------------------------------------------------------------------

def chosen_identities(test_ids, n: int, seed: int) -> list[int]:
    """The ``n`` test identities of the grid (all of them when there are fewer), drawn with
    ``seed``, ascending: the same speakers for every method evaluated with that seed."""
    ids = sorted(test_ids)
    return sorted(random.Random(seed).sample(ids, min(n, len(ids))))


def evaluation_grid(dm, chosen: list[int], utterances: int) -> GridCollector:
    names = {i["index"]: i["name"] for i in dm.identities}
    return GridCollector(len(chosen), utterances, n_real=2, identities=chosen, names=names,
                         middle="from face", n_middle=1)  # short: one column wide


# --- the test gallery ------------------------------------------------------------------------

@dataclass
class Gallery:
    """The test gallery images: judge embeddings and predictions, the embeddings in the
    probes' space (``own``), labels; ``probe``: the real-faces row's probe half."""

    judge: Tensor
    gender_logit: Tensor
    own: Tensor
    identity: Tensor
    gender: Tensor
    index: Tensor
    probe: Tensor = field(init=False)

    def __post_init__(self):
        self.probe = halves(self.identity, self.index)

    def rows(self, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(identity, gender, index) of the images in ``mask`` (all without one)."""
        if mask is None:
            return self.identity, self.gender, self.index
        return self.identity[mask], self.gender[mask], self.index[mask]

    def image_counts(self) -> tuple[int, ...]:
        """Images of each identity, by ascending identity."""
        return tuple(int(n) for n in torch.unique(self.identity, return_counts=True)[1])


def gallery_pass(subject: Subject, dm, grid: GridCollector, device) -> Gallery:
    """The test gallery through the judge (and the method's own face embedder), its real faces
    and the method's ``reference_faces`` of them into the grid."""
    g: dict[str, list] = {k: [] for k in ("judge", "gender_logit", "own", "identity", "gender",
                                          "index")}
    for batch in dm.gallery_dataloader("test", **LOADER):
        face = batch["face"].to(device)
        j = subject.judge(face)
        g["judge"].append(j["embedding"].cpu())
        g["gender_logit"].append(j["gender"].cpu())
        g["own"].append(j["embedding"].cpu() if subject.judged else subject.faces(face).cpu())
        for k in ("identity", "gender", "index"):
            g[k].append(batch[k])
        with torch.no_grad():
            reference = subject.method.reference_faces(face)
        for i, identity in enumerate(batch["identity"].tolist()):
            grid.add_real(identity, batch["face"][i:i + 1])
            if reference is not None:
                grid.add_middle(identity, reference[i])
    return Gallery(**{k: stack(v) for k, v in g.items()})


def stack(chunks: list[Tensor]) -> Tensor:
    return torch.cat(chunks) if chunks else torch.empty(0)


def centroids(emb: Tensor, identity: Tensor) -> dict[int, Tensor]:
    """Each identity's mean embedding, unit length."""
    return {int(i): F.normalize(emb[identity == i].mean(0), dim=0)
            for i in torch.unique(identity).tolist()}


def halves(identity: Tensor, index: Tensor) -> Tensor:
    """Mask of the probe half: per identity, its 2nd, 4th, ... gallery image by index."""
    probe = torch.zeros(len(identity), dtype=torch.bool)
    for i in torch.unique(identity).tolist():
        rows = torch.nonzero(identity == i).flatten()
        rows = rows[torch.argsort(index[rows])]
        probe[rows[1::2]] = True
    return probe


# --- rows ------------------------------------------------------------------------------------

def local(metrics):
    """Metrics that never sync: evaluation is one process, even when it runs after a DDP fit
    on rank 0 while the process group still exists."""
    for m in metrics.modules():
        if isinstance(m, Metric):  # the constructor's `distributed_available_fn`, set afterwards
            m.distributed_available_fn = _single_process
    return metrics


def _single_process() -> bool:
    return False


def metric_rows(gallery: Gallery, *, proposal: bool, judged: bool, num_classes: int,
                seed: int) -> dict[str, Row]:
    """The rows measured from probes, in the table's order, their galleries filled: the
    method's and the unchanged proposals' (with ``proposal``) against every test image in
    the probes' space, the real faces' (``real_faces_row``)."""
    n_ids = len(torch.unique(gallery.identity))
    options = dict(num_classes=num_classes, top_k=TOP_K, seed=seed,
                   recall_block_size=BLOCK if n_ids >= BLOCK else None)
    rows = {"method": local(make_metrics("test", **options))}
    if proposal:
        # the unchanged proposals as probes: what a method that ignores the voice scores
        rows["proposal_faces"] = local(make_metrics("test", **options))
    for row in rows.values():
        row["embedding"].update(gallery.own, *gallery.rows(), role="gallery")
    rows["real_faces"] = real_faces_row(local(make_metrics("test", **options)), gallery)
    if judged:
        rows["method"]["frechet"] = frechet_to_real(gallery)
    rows["real_faces"]["frechet"] = frechet_to_real(gallery)
    rows["real_faces"]["frechet"].update(gallery.judge[gallery.probe], real=False)
    return rows


def real_faces_row(row: Row, gallery: Gallery) -> Row:
    """A held-out real photo of the speaker as the probe: half of each identity's images as
    probes against the other half, in the judge's space (known split: ``known_split``)."""
    probe = gallery.probe
    row["embedding"].update(gallery.judge[~probe], *gallery.rows(~probe), role="gallery")
    row["embedding"].update(gallery.judge[probe], *gallery.rows(probe), role="probe")
    row["gender"].update(gallery.gender_logit[probe].sigmoid(), gallery.gender[probe])
    half = centroids(gallery.judge[~probe], gallery.identity[~probe])
    row["cosine"].update(gallery.judge[probe],
                         torch.stack([half[int(i)] for i in gallery.identity[probe]]))
    return row


def frechet_to_real(gallery: Gallery) -> MetricCollection:
    """Image quality: a Fréchet distance whose real side is the gallery's reference half (for
    real faces, the probe half is the other side: the distance that sampling alone leaves)."""
    metric = local(MetricCollection({"frechet": FeatureFrechetDistance(gallery.judge.shape[1])}))
    metric.update(gallery.judge[~gallery.probe], real=True)
    return metric


def compute_row(row: Row, errors: dict[str, str]) -> dict[str, float]:
    """A row's values; what its split cannot support goes to ``errors`` instead."""
    out: dict[str, float] = {}
    for group in row.values():
        values, failed = compute_each(group)
        out.update({k: float(v) for k, v in values.items()})
        errors.update(failed)
    return out


# --- the test utterances ---------------------------------------------------------------------

@dataclass
class Probes:
    """What the pass over the test utterances leaves besides the rows it updates."""

    count: int = 0
    gender: list[Tensor] = field(default_factory=list)
    # Liang et al.'s retrieval queries: judge embeddings of each row's faces, and the speakers
    queries: dict[str, list[Tensor]] = field(
        default_factory=lambda: {"method": [], "proposal_faces": []})
    speakers: list[Tensor] = field(default_factory=list)
    similarity: dict[str, list[Tensor]] = field(
        default_factory=lambda: {"to_proposal": [], "to_speaker": [], "random_pairs": []})
    sweep_voices: dict[int, Voices] = field(default_factory=dict)  # one per grid identity


def probe_pass(subject: Subject, dm, rows: dict[str, Row], gallery: Gallery,
               grid: GridCollector, chosen: list[int], device) -> Probes:
    """One face per test utterance (or the method's voice embedding) as the probe of the
    method's row; for a method with proposals, the judged proposals as the probes of theirs
    and Liang et al.'s Table 3 cosines; the generated faces into the grid."""
    own_centroids = centroids(gallery.own, gallery.identity)
    judge_centroids = centroids(gallery.judge, gallery.identity)
    out = Probes()
    for batch in dm.eval_dataloader("test", **LOADER):
        out.gender.append(batch["gender"])
        faces, o, proposal = subject.voices(batch, device)
        emb = o.embedding.cpu()
        if proposal is not None:
            judged = judge_faces(subject.judge, proposal)
            update_proposal_row(rows["proposal_faces"], judged, batch, judge_centroids)
            similarity = table3_similarities(emb, judged.embedding.cpu(), batch["identity"],
                                             proposal_identity(batch["identity"]),
                                             judge_centroids)
            for k, v in similarity.items():
                out.similarity[k].append(v)
            out.queries["proposal_faces"].append(judged.embedding.cpu())
        update_method_row(rows["method"], o, batch, own_centroids, subject.judged)
        if subject.judged:
            out.queries["method"].append(emb)
            out.speakers.append(batch["identity"])
        for i, identity in enumerate(batch["identity"].tolist()):
            if faces is not None:
                grid.add_fake(identity, faces[i], None if proposal is None else proposal[i])
            if proposal is not None and identity in chosen and identity not in out.sweep_voices:
                out.sweep_voices[identity] = Voices(batch["mel"][i:i + 1],
                                                    batch["mel_lengths"][i:i + 1])
        out.count += len(emb)
    return out


def update_method_row(row: Row, o: Embeddings, batch: dict, own_centroids: dict[int, Tensor],
                      judged: bool) -> None:
    """The method's probes of one batch: matching and recall, its Fréchet side (faces it
    generates), gender (if it predicts it) and the cosine to the speaker's mean face."""
    emb = o.embedding.cpu()
    row["embedding"].update(emb, batch["identity"], batch["gender"], batch["index"], role="probe")
    if judged:
        row["frechet"].update(emb, real=False)
    if o.gender is not None:
        row["gender"].update(o.gender.cpu().sigmoid(), batch["gender"])
    row["cosine"].update(emb, torch.stack([own_centroids[int(i)] for i in batch["identity"]]))


def update_proposal_row(row: Row, proposal: Embeddings, batch: dict,
                        judge_centroids: dict[int, Tensor]) -> None:
    """The unchanged proposals of one batch as probes (judge space)."""
    p = proposal.embedding.cpu()
    identity = batch["identity"]
    row["embedding"].update(p, identity, batch["gender"], batch["index"], role="probe")
    row["gender"].update(proposal.gender.cpu().sigmoid(), batch["gender"])
    row["cosine"].update(p, torch.stack([judge_centroids[int(i)] for i in identity]))


def proposal_identity(identity: Tensor) -> Tensor:
    """The identity each utterance's proposal face shows: ``proposal_faces`` picks rows, so
    applied to the identities it names the identity of the face it picks."""
    return proposal_faces(identity[:, None], identity)[:, 0]


def table3_similarities(generated: Tensor, proposal: Tensor, speaker: Tensor, shown: Tensor,
                        centroids: dict[int, Tensor]) -> dict[str, Tensor]:
    """Liang et al.'s Table 3 (generated vs A, vs B, vs random pairs), per utterance: the
    cosine of each generated face's unit embedding to its proposal's (``to_proposal``), to
    the speaker's mean face (``to_speaker``), and the mean over the other identities' mean
    faces, neither the speaker's nor the proposal's (``shown``), of its cosine to them
    (``random_pairs``). ``centroids``: unit mean embedding of every identity."""
    ids = sorted(centroids)
    sims = generated @ torch.stack([centroids[i] for i in ids]).T  # [B, identities]
    position = {i: k for k, i in enumerate(ids)}
    rows = torch.arange(len(speaker))
    own = torch.tensor([position[int(i)] for i in speaker])
    other = torch.tensor([position.get(int(i), -1) for i in shown])
    random_pairs = sims.clone()
    random_pairs[rows, own] = float("nan")
    random_pairs[rows[other >= 0], other[other >= 0]] = float("nan")
    return {"to_proposal": (generated * proposal).sum(-1), "to_speaker": sims[rows, own],
            "random_pairs": torch.nanmean(random_pairs, dim=1)}


def sweep_row(method: MethodModule, grid: GridCollector, chosen: list[int],
              voices: dict[int, Voices], device) -> None:
    """The grid's last row: one proposal (a real face of the first grid identity) under every
    grid speaker's voice, in the order of the rows above."""
    if not voices or not grid.real.get(chosen[0]):
        return
    face = grid.real[chosen[0]][0].to(device)
    with torch.no_grad():
        swept = [method.generate_faces(voices[i].to(device), face[None])[0]
                 for i in chosen if i in voices]
    grid.set_sweep("same proposal", face, swept)


def known_split(subject: Subject, dm, rows: dict[str, Row], device) -> int:
    """Held-out utterances of training identities: the identity top-k of the method's faces
    (or its own predictions), of the proposals and of the real face; the samples counted."""
    if "known" not in dm.manifest["splits"]:
        return 0
    n = 0
    for batch in dm.eval_dataloader("known", **LOADER):
        _, o, proposal = subject.voices(batch, device)
        labels = batch["label"]
        keep = labels >= 0
        if proposal is not None:
            p = subject.judge(proposal)["identity"].cpu()
            rows["proposal_faces"]["identity"].update(p[keep], labels[keep])
        if o.identity is not None:
            rows["method"]["identity"].update(o.identity.cpu()[keep], labels[keep])
        real_logits = subject.judge(batch["face"].to(device))["identity"].cpu()
        rows["real_faces"]["identity"].update(real_logits[keep], labels[keep])
        n += int(keep.sum())
    return n


# --- the judge's attribute read-outs (issue 26) ---------------------------------------------

def retrieval(queries: dict[str, Tensor], identity: Tensor, gallery: Tensor,
              gallery_identity: Tensor, seed: int, errors: dict[str, str]
              ) -> tuple[dict[str, float], int]:
    """``({row: share of hits, ..., "chance": ...}, gallery size)``: Liang et al.'s face
    retrieval of each row's queries (judge embeddings, one per test utterance, speakers
    ``identity``) in galleries drawn once for every row, so the rows differ only in their
    queries. ``{}`` (and the reason in ``errors``) when the gallery holds no more than K
    images: every query would hit."""
    galleries = sampled_galleries(identity, gallery_identity, RETRIEVAL_GALLERY, seed)
    size = galleries.shape[1]
    if size <= RETRIEVAL_K:
        errors[RETRIEVAL_KEY] = (f"{RETRIEVAL_KEY} not applicable: K={RETRIEVAL_K} is at least "
                                 f"the gallery size, {size} images, so every query would score 1")
        return {}, size
    out = {name: float(gallery_hits(q, identity, gallery, gallery_identity, galleries,
                                    RETRIEVAL_K).double().mean())
           for name, q in queries.items()}
    out["chance"] = float(gallery_chance(identity, gallery_identity, galleries,
                                         RETRIEVAL_K).mean())
    return out, size


def probe_retrieval(probes: Probes, gallery: Gallery, seed: int, errors: dict[str, str]
                    ) -> tuple[dict[str, float], int | None]:
    """``retrieval`` of the generated faces (and proposals) of the probe pass; nothing for a
    method measured in its own space."""
    if not probes.queries["method"]:
        return {}, None
    queries = {k: stack(v) for k, v in probes.queries.items() if v}
    return retrieval(queries, stack(probes.speakers), gallery.judge, gallery.identity, seed,
                     errors)
