"""``voice2face evaluate --ckpt CKPT [--data DIR] [--judge CKPT] --out DIR``

Runs the test split through a trained method and writes, into ``--out``:

* ``metrics.json``: every number, per row;
* ``metrics.md``: the table, with its reference rows;
* ``grid.png``: for a seeded sample of test identities, real faces beside faces generated
  from several of their utterances (methods that generate faces); between them, for a
  method that makes them, its ``reference_faces`` of a real face (the regression's decoding
  of the face's true feature).

Protocol (``voice2face.metrics`` states each metric's):

* one face per test utterance, from the whole utterance; its judge embedding is the probe
  of 1:2 matching (exhaustive, unstratified and with same-gender imposters, Wen et al. 2019
  Table 3) and recall@K over the test identities (gallery: the judge embeddings of the
  test gallery images); gender accuracy of the judge's gender head on the generated faces;
  cosine similarity of the generated face's embedding to the speaker's mean real-face
  embedding;
* on the ``known`` split (held-out utterances of training identities): the judge's identity
  top-1/top-5 on the generated faces, as Wen et al. report for known subjects;
* face retrieval as Liang et al. (2020) report it, for methods that generate faces
  (``retrieval_top5``): each generated face is the query against its own gallery of 500
  test gallery images, one of the speaker's and the rest of other identities, drawn with
  the seed (``metrics.sampled_galleries``; a split of fewer images gives all of them, and
  the table says so); the share of queries with the speaker's image among the 5
  nearest by cosine, against chance ``1 - C(G - t, 5) / C(G, 5)`` for ``t`` images of the
  speaker in a gallery of ``G`` (5 / 500 = 0.01 with one). The unchanged proposals are
  measured on the same galleries. The GAN's faces are queries as much as the CAE's: one
  measure for every generator;
* image quality: the Fréchet distance (Heusel et al. 2017) between the judge features of the
  generated faces and those of one half of the real test gallery (``frechet``, lower is
  better; the real-faces row compares the other half with it, which is what sampling alone
  leaves). The judge replaces Inception: no Inception weights are downloaded, and the judge
  was trained on what this data's faces vary in;
* a method that embeds voices and faces itself (``Evaluation.OWN_SPACE``, e.g. ``dimnet``) is
  measured in its own space: its voice embedding is the probe, its face embedding makes the
  gallery, its own predictions (if it makes them) give gender and identity.

A method is used only through the contract of ``voice2face.methods.base``: what its class
declares (``evaluation``, ``needs_proposal``) and the calls that go with it.

Reference rows, measured in the same run: **chance**; **real faces**: each test identity's
gallery images split in two halves by index, one half as probes against the other as gallery
(a held-out real photo of the speaker: what a perfect generator would score with this judge;
on ``known`` the sample's real face); the world's **ceiling** from the manifest (synthetic
data only). The same seed gives the same numbers: the data order is fixed, matching is
exhaustive, and the conditional GAN's z comes from the seeded generator.

The judge is a ``face`` checkpoint trained on the same data (checked by the data
fingerprint); it defaults to ``DATA/pretrained/face.ckpt``, and ``--data`` to the data the
checkpoint was trained on. Data other than the checkpoint's (another identity table, by the
fingerprint the checkpoint records) is refused unless ``--allow-other-data`` is given.
``--decoder PATH`` replaces the method's ``decoder`` part (a method that lists it in
``replaceable_parts``, e.g. ``regression``'s face decoder).

A method's own measures (``MethodModule.extra_metrics``, e.g. the feature distances and
feature recall of ``regression``) are written under ``extra`` and as a second table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection

from voice2face.grid import GridCollector, save_png
from voice2face.methods import (CheckpointError, Embeddings, Evaluation, MethodModule, Voices,
                                evaluable_methods, load_method)
from voice2face.methods.base import data_info, proposal_faces, read_checkpoint_meta
from voice2face.methods.pretrained import judge_faces, load_judge
from voice2face.metrics import (FeatureFrechetDistance, compute_each, gallery_chance,
                                gallery_hits, make_metrics, sampled_galleries)
from voice2face.errors import UserError, reports_errors

TOP_K = (1, 5, 10, 20, 50)
BLOCK = 100  # SF2F's recall blocks of 100 identities, when the split has that many
# Liang et al.'s face retrieval: the speaker among the top RETRIEVAL_K of RETRIEVAL_GALLERY
RETRIEVAL_GALLERY, RETRIEVAL_K = 500, 5
RETRIEVAL_KEY = f"retrieval_top{RETRIEVAL_K}"
TABLE_COLUMNS = [  # (key, header)
    ("match_1to2", "1:2 match"), ("match_1to2_gender", "1:2 match, same gender"),
    ("recall@1", "R@1"), ("recall@5", "R@5"), ("recall@10", "R@10"),
    ("gender_acc", "gender acc"), ("cosine", "cosine to speaker"),
    ("identity_top1", "known top-1"), ("identity_top5", "known top-5"),
    ("frechet", "Fréchet (judge)"),
]


# --- the method under test, through its contract (methods.base) -----------------------------

class Subject:
    """A method in the space its probes are measured in: the judge's, for the faces it
    generates, or its own (``Evaluation.OWN_SPACE``)."""

    def __init__(self, method: MethodModule, judge):
        self.method, self.judge = method, judge
        self.judged = method.evaluation is Evaluation.GENERATED_FACES

    @torch.no_grad()
    def voices(self, batch: dict, device
               ) -> tuple[torch.Tensor | None, Embeddings, torch.Tensor | None]:
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
    def faces(self, face: torch.Tensor) -> torch.Tensor:
        """Gallery embeddings in the probes' space."""
        return self.judge.embed(face) if self.judged else self.method.embed_faces(face).embedding


# --- evaluation ------------------------------------------------------------------------------

def _stack(chunks: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(chunks) if chunks else torch.empty(0)


def _centroids(emb: torch.Tensor, identity: torch.Tensor) -> dict[int, torch.Tensor]:
    return {int(i): F.normalize(emb[identity == i].mean(0), dim=0)
            for i in torch.unique(identity).tolist()}


def _halves(identity: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Mask of the probe half: per identity, its 2nd, 4th, ... gallery image by index."""
    probe = torch.zeros(len(identity), dtype=torch.bool)
    for i in torch.unique(identity).tolist():
        rows = torch.nonzero(identity == i).flatten()
        rows = rows[torch.argsort(index[rows])]
        probe[rows[1::2]] = True
    return probe


def _local(metrics):
    """Metrics that never sync: evaluation is one process, even when it runs after a DDP fit
    on rank 0 while the process group still exists."""
    from torchmetrics import Metric
    for m in metrics.modules():
        if isinstance(m, Metric):  # the constructor's `distributed_available_fn`, set afterwards
            m.distributed_available_fn = _single_process
    return metrics


def _single_process() -> bool:
    return False


def _compute(metrics, errors: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for group in metrics.values():
        values, failed = compute_each(group)
        out.update({k: float(v) for k, v in values.items()})
        errors.update(failed)
    return out


def _chance(keys: list[str], n_ids: int, image_counts: list[int], gallery_size: int,
            gender: torch.Tensor, num_classes: int, cosine: float) -> dict[str, float]:
    """What guessing scores on each metric of this split."""
    out: dict[str, float] = {}
    for key in keys:
        if key.startswith("match_1to"):
            out[key] = 1.0 / int(key.split("_")[1][3:])
        elif key.startswith("recall@"):
            k = int(key[len("recall@"):].split("_")[0])
            if "_block" in key:
                out[key] = min(1.0, k / int(key.rsplit("_block", 1)[1]))
            elif "_image" in key:  # P(one of the speaker's n images among k of G drawn)
                out[key] = 1.0 if k >= gallery_size else float(np.mean(
                    [1 - math.comb(gallery_size - n, k) / math.comb(gallery_size, k)
                     for n in image_counts]))
            else:
                out[key] = min(1.0, k / n_ids)
        elif key == "gender_acc":  # a constant guess of the more frequent gender
            p = float(gender.float().mean()) if len(gender) else 0.5
            out[key] = max(p, 1 - p)
        elif key.startswith("identity_top"):
            out[key] = min(1.0, int(key[len("identity_top"):]) / num_classes)
        elif key == "cosine":
            out[key] = cosine
    return out


def evaluate(ckpt: str | Path, out: str | Path, data: str | Path | None = None,
             judge: str | Path | None = None, *, batch_size: int = 64, num_workers: int = 0,
             seed: int = 0, device: str = "cpu", grid_identities: int = 8,
             grid_utterances: int = 4, parts: dict[str, str | Path] | None = None,
             allow_other_data: bool = False, log=print) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split; writes metrics.json, metrics.md, grid.png.
    ``parts``: ``{name: checkpoint}`` replacing the method's parts (``replace_part``).
    Data other than the checkpoint's (by its fingerprint) is a ``CheckpointError`` unless
    ``allow_other_data``."""
    import lightning as L

    from datamodules import VoiceFaceDataModule

    started = time.time()
    out = Path(out)
    meta = read_checkpoint_meta(ckpt)
    method = load_method(ckpt, expect=evaluable_methods())
    for name, path in (parts or {}).items():
        method.replace_part(name, path)
    method.check_ready()
    method.cache_utterances()  # loaded for this evaluation alone: its weights stay as they are
    data = Path(data or meta["data"]["root"])
    dm = VoiceFaceDataModule(data, batch_size=batch_size, eval_batch_size=batch_size,
                             num_workers=num_workers, spectrogram=method.needs_spectrogram)
    info = data_info(dm)
    _check_data(ckpt, meta["data"], info, allow_other_data, log,
                own_root=Path(meta["data"]["root"]) == data)
    judge_path = Path(judge) if judge else data / "pretrained" / "face.ckpt"
    if not judge_path.is_file():
        raise CheckpointError(f"no judge at {judge_path}: evaluation embeds faces with a `face` "
                              f"checkpoint trained on {data}; make one with `voice2face train "
                              f"face data.root={data} --export {judge_path}` or pass --judge")
    judge_net = load_judge(judge_path, info)
    method.to(device)
    judge_net.to(device)
    subject = Subject(method, judge_net)
    L.seed_everything(seed, workers=True, verbose=False)

    names = {i["index"]: i["name"] for i in dm.identities}
    test_ids = sorted(i["index"] for i in dm.identities if i["split"] == "test")
    chosen = sorted(random.Random(seed).sample(test_ids, min(grid_identities, len(test_ids))))
    grid = GridCollector(len(chosen), grid_utterances, n_real=2, identities=chosen, names=names,
                         middle="from face", n_middle=1)  # short: one column wide
    loader = dict(rank=0, world_size=1)

    # test gallery: judge embeddings (reference rows) and the method's own (if it has a space)
    g: dict[str, list] = {k: [] for k in ("judge", "own", "gender_logit", "identity", "gender", "index")}
    for batch in dm.gallery_dataloader("test", **loader):
        face = batch["face"].to(device)
        j = judge_net(face)
        g["judge"].append(j["embedding"].cpu())
        g["gender_logit"].append(j["gender"].cpu())
        g["own"].append(subject.faces(face).cpu() if not subject.judged else j["embedding"].cpu())
        for k in ("identity", "gender", "index"):
            g[k].append(batch[k])
        with torch.no_grad():
            reference = method.reference_faces(face)
        for i, identity in enumerate(batch["identity"].tolist()):
            grid.add_real(identity, batch["face"][i:i + 1])
            if reference is not None:
                grid.add_middle(identity, reference[i])
    g = {k: _stack(v) for k, v in g.items()}
    n_ids = len(torch.unique(g["identity"]))
    num_classes = info["num_train_identities"]
    options = dict(num_classes=num_classes, top_k=TOP_K, seed=seed,
                   recall_block_size=BLOCK if n_ids >= BLOCK else None)
    rows = {"method": _local(make_metrics("test", **options)),
            "real_faces": _local(make_metrics("test", **options))}
    if method.needs_proposal:
        # the unchanged proposals as probes: what a method that ignores the voice scores
        rows = {"method": rows["method"], "proposal_faces": _local(make_metrics("test", **options)),
                "real_faces": rows["real_faces"]}
        rows["proposal_faces"]["embedding"].update(g["own"], g["identity"], g["gender"],
                                                   g["index"], role="gallery")
    similarity = {"to_proposal": [], "to_speaker": [], "random_pairs": []}
    own_centroids, judge_centroids = _centroids(g["own"], g["identity"]), _centroids(g["judge"], g["identity"])

    # method row: its gallery is every test image
    rows["method"]["embedding"].update(g["own"], g["identity"], g["gender"], g["index"], role="gallery")
    # real-faces row: half of each identity's images as probes, the other half as gallery
    probe = _halves(g["identity"], g["index"])
    real = rows["real_faces"]
    real["embedding"].update(g["judge"][~probe], g["identity"][~probe], g["gender"][~probe],
                             g["index"][~probe], role="gallery")
    real["embedding"].update(g["judge"][probe], g["identity"][probe], g["gender"][probe],
                             g["index"][probe], role="probe")
    real["gender"].update(g["gender_logit"][probe].sigmoid(), g["gender"][probe])
    half = _centroids(g["judge"][~probe], g["identity"][~probe])
    real["cosine"].update(g["judge"][probe], torch.stack([half[int(i)] for i in g["identity"][probe]]))
    # image quality: the Fréchet distance of the probes' judge features to the real gallery half
    # (for real faces, the held-out half: the distance that sampling alone leaves)
    frechet_rows = ["method", "real_faces"] if subject.judged else ["real_faces"]
    for name in frechet_rows:
        rows[name]["frechet"] = _local(MetricCollection(
            {"frechet": FeatureFrechetDistance(g["judge"].shape[1])}))
        rows[name]["frechet"].update(g["judge"][~probe], real=True)
    real["frechet"].update(g["judge"][probe], real=False)

    # test utterances -> probes
    n_test, probe_gender = 0, []
    queries: dict[str, list] = {"identity": [], "method": [], "proposal_faces": []}
    sweep_voices: dict[int, Voices] = {}  # one utterance per grid identity, for the sweep row
    for batch in dm.eval_dataloader("test", **loader):
        probe_gender.append(batch["gender"])
        faces, o, proposal = subject.voices(batch, device)
        emb = o.embedding.cpu()
        if proposal is not None:
            judged_proposal = judge_faces(judge_net, proposal)
            _update_proposal_rows(rows["proposal_faces"], similarity, judged_proposal,
                                  emb, batch, judge_centroids)
            queries["proposal_faces"].append(judged_proposal.embedding.cpu())
        rows["method"]["embedding"].update(emb, batch["identity"], batch["gender"], batch["index"],
                                           role="probe")
        if subject.judged:
            rows["method"]["frechet"].update(emb, real=False)
            queries["method"].append(emb)
            queries["identity"].append(batch["identity"])
        if o.gender is not None:
            rows["method"]["gender"].update(o.gender.cpu().sigmoid(), batch["gender"])
        rows["method"]["cosine"].update(emb, torch.stack([own_centroids[int(i)]
                                                          for i in batch["identity"]]))
        for i, identity in enumerate(batch["identity"].tolist()):
            if faces is not None:
                grid.add_fake(identity, faces[i], None if proposal is None else proposal[i])
            if proposal is not None and identity in chosen and identity not in sweep_voices:
                sweep_voices[identity] = Voices(batch["mel"][i:i + 1],
                                                batch["mel_lengths"][i:i + 1])
        n_test += len(emb)

    if sweep_voices and grid.real.get(chosen[0]):
        # one proposal (a real face of the first grid identity) under every grid speaker's voice
        face = grid.real[chosen[0]][0].to(device)
        with torch.no_grad():
            swept = [method.generate_faces(sweep_voices[i].to(device), face[None])[0]
                     for i in chosen if i in sweep_voices]
        grid.set_sweep("same proposal", face, swept)  # the voices of the rows above

    # known speakers: identity top-k of the method's faces (and of the real face)
    n_known = 0
    if "known" in dm.manifest["splits"]:
        for batch in dm.eval_dataloader("known", **loader):
            _, o, proposal = subject.voices(batch, device)
            labels = batch["label"]
            keep = labels >= 0
            if proposal is not None:
                p = judge_net(proposal)["identity"].cpu()
                rows["proposal_faces"]["identity"].update(p[keep], labels[keep])
            if o.identity is not None:
                rows["method"]["identity"].update(o.identity.cpu()[keep], labels[keep])
            real_logits = judge_net(batch["face"].to(device))["identity"].cpu()
            real["identity"].update(real_logits[keep], labels[keep])
            n_known += int(keep.sum())

    errors: dict[str, str] = {}
    results: dict[str, Any] = {"rows": {name: _compute(m, errors) for name, m in rows.items()}}
    results["extra"] = {k: float(v) for k, v in method.extra_metrics(dm, device).items()}
    retrieval, retrieval_gallery = {}, None
    if queries["method"]:
        retrieval, retrieval_gallery = _retrieval(
            {k: _stack(v) for k, v in queries.items() if k != "identity" and v},
            _stack(queries["identity"]), g["judge"], g["identity"], seed, errors)
    for name, why in errors.items():
        log(f"voice2face evaluate: no {name}: {why}")
    keys = list(results["rows"]["method"])
    chance_cos = _chance_cosine(g["judge"][probe], g["identity"][probe], judge_centroids)
    counts = torch.bincount(g["identity"]).tolist()
    image_counts = [counts[int(i)] for i in torch.unique(g["identity"])]
    results["rows"]["chance"] = _chance(keys, n_ids, image_counts, len(g["identity"]),
                                        _stack(probe_gender), num_classes, chance_cos)
    for name, value in retrieval.items():
        results["rows"][name][RETRIEVAL_KEY] = value
    ceilings = dm.manifest.get("ceilings") or {}
    if ceilings:
        results["rows"]["ceiling"] = {k: float(v) for k, v in ceilings.items()
                                      if k.startswith("match_")}
    if similarity["to_speaker"]:
        results["proposal_similarity"] = {k: float(torch.cat(v).mean())
                                          for k, v in similarity.items()}
    results.update({
        "checkpoint": str(ckpt), "method": method.method, "variant": method.variant,
        "label": method.label,
        "data": str(data), "judge": str(judge_path), "seed": seed,
        "counts": {"test_utterances": n_test, "test_identities": n_ids,
                   "test_gallery_images": len(g["identity"]), "known_utterances": n_known,
                   "real_face_probes": int(probe.sum()),
                   **({"retrieval_gallery_images": retrieval_gallery}
                      if retrieval_gallery is not None else {})},
        "not_computed": errors, "seconds": round(time.time() - started, 1),
    })
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "metrics.json", results)
    _write_text(out / "metrics.md", markdown_table(results))
    image = grid.image()
    if image is not None:
        save_png(image, out / "grid.png")
    results["files"] = {"json": str(out / "metrics.json"), "table": str(out / "metrics.md"),
                        "grid": str(out / "grid.png") if image is not None else None}
    return results


def _check_data(ckpt, trained_on: dict[str, Any], data: dict[str, Any], allow: bool,
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


def _update_proposal_rows(metrics, similarity: dict[str, list], proposal: Embeddings,
                          emb: torch.Tensor, batch: dict,
                          centroids: dict[int, torch.Tensor]) -> None:
    """The unchanged proposals as probes (``metrics``), and the judge-space cosine of each
    generated face to its proposal, to its speaker's mean face, and to the mean faces of
    the other identities (neither the speaker's nor the proposal's): Liang et al.'s Table 3
    (generated vs A, vs B, vs random pairs)."""
    p = proposal.embedding.cpu()
    identity = batch["identity"]
    metrics["embedding"].update(p, identity, batch["gender"], batch["index"], role="probe")
    metrics["gender"].update(proposal.gender.cpu().sigmoid(), batch["gender"])
    speaker = torch.stack([centroids[int(i)] for i in identity])
    metrics["cosine"].update(p, speaker)
    ids = sorted(centroids)
    sims = emb @ torch.stack([centroids[i] for i in ids]).T  # [B, identities]
    position = {i: k for k, i in enumerate(ids)}
    # the proposal's identity: proposal_faces picks rows, so applied to the identities it
    # names the identity each proposal shows
    shown = proposal_faces(identity[:, None], identity)[:, 0]
    rows = torch.arange(len(identity))
    own = torch.tensor([position[int(i)] for i in identity])
    other = torch.tensor([position.get(int(i), -1) for i in shown])
    similarity["to_proposal"].append((emb * p).sum(-1))
    similarity["to_speaker"].append(sims[rows, own])
    random_pairs = sims.clone()
    random_pairs[rows, own] = float("nan")
    random_pairs[rows[other >= 0], other[other >= 0]] = float("nan")
    similarity["random_pairs"].append(torch.nanmean(random_pairs, dim=1))


def _retrieval(queries: dict[str, torch.Tensor], identity: torch.Tensor, gallery: torch.Tensor,
               gallery_identity: torch.Tensor, seed: int, errors: dict[str, str]
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


def _chance_cosine(emb: torch.Tensor, identity: torch.Tensor,
                   centroids: dict[int, torch.Tensor]) -> float:
    """Mean cosine of a real face to the mean face of another identity: an unrelated face."""
    ids = sorted(centroids)
    c = torch.stack([centroids[i] for i in ids])
    sims = emb @ c.T  # [n, J]
    own = torch.tensor([ids.index(int(i)) for i in identity])
    sims[torch.arange(len(own)), own] = float("nan")
    return float(torch.nanmean(sims))


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, method row first, then the reference rows."""
    labels = {"method": results["label"],
              "proposal_faces": "proposal faces, unchanged (the voice ignored)",
              "real_faces": "real faces (judge, held-out photo)", "chance": "chance",
              "ceiling": "ceiling (synthetic world)"}
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(k in r for r in results["rows"].values())]
    lines = [f"Test split of `{results['data']}`: {results['counts']['test_utterances']} utterances "
             f"of {results['counts']['test_identities']} identities, "
             f"{results['counts']['test_gallery_images']} gallery images; known speakers: "
             f"{results['counts']['known_utterances']} utterances. Judge `{results['judge']}`, "
             f"seed {results['seed']}, checkpoint `{results['checkpoint']}`.", "",
             "| | " + " | ".join(h for _, h in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, row in results["rows"].items():
        cells = [f"{row[k]:.3f}" if k in row else "—" for k, _ in cols]
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    if "proposal_similarity" in results:
        s = results["proposal_similarity"]
        lines += ["", f"Judge-space cosine of the generated face to its proposal face "
                  f"{s['to_proposal']:.3f}, to the speaker's mean real face {s['to_speaker']:.3f}, "
                  f"to other identities' mean faces (random pairs) {s['random_pairs']:.3f} "
                  f"(Liang et al., Table 3)."]
    retrieval = _retrieval_sentence(results)
    if retrieval:
        lines += ["", retrieval]
    if results.get("extra"):
        lines += ["", f"{results['label']}'s own measures:", "", "| measure | value |",
                  "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in results["extra"].items()]
    lines += ["", "Matching is exhaustive (every probe against every other identity); recall@K "
              "ranks one entry per test identity (mean embedding). Chance for gender accuracy is "
              "a constant guess of the more frequent gender; for cosine, the similarity of a "
              "real face to another identity's mean face. `metrics.json` holds every variant "
              "(L1/L2, image gallery, blocks of 100 identities).", ""]
    return "\n".join(lines)


def _retrieval_sentence(results: dict[str, Any]) -> str | None:
    """Liang et al.'s face retrieval in words, or None without it."""
    rows, size = results["rows"], results["counts"].get("retrieval_gallery_images")
    if RETRIEVAL_KEY not in rows["method"]:
        return None
    if size < RETRIEVAL_GALLERY:
        gallery = (f"a gallery of all {size} test gallery images (the split has fewer than "
                   f"{RETRIEVAL_GALLERY})")
    else:
        gallery = (f"a gallery of {size} test gallery images drawn per query with seed "
                   f"{results['seed']} (one of the speaker's, the others of other identities)")
    proposal = rows.get("proposal_faces", {}).get(RETRIEVAL_KEY)
    proposal = "" if proposal is None else f"the unchanged proposals as queries: {proposal:.3f}; "
    return (f"Face retrieval (Liang et al.): an image of the speaker is among the "
            f"{RETRIEVAL_K} nearest to the generated face in {gallery} for "
            f"{rows['method'][RETRIEVAL_KEY]:.3f} of the queries ({proposal}chance "
            f"{rows['chance'][RETRIEVAL_KEY]:.3f}).")


def log_evaluation(results: dict[str, Any], loggers) -> None:
    """The evaluation to every W&B logger of the run: the table of metrics.md as a
    ``wandb.Table`` (``eval/table``, one row per row: the method, real faces, chance, ...),
    the grid (``eval/grid``) and the method's row and own measures as ``test/<key>`` in the
    run summary, where the W&B run table and sweeps can compare them."""
    from lightning.pytorch.loggers import WandbLogger
    targets = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not targets:
        return
    rows = results["rows"]
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    data = [[name, *(row.get(k) for k in keys)] for name, row in rows.items()]
    summary = {f"test/{k}": v for k, v in {**rows["method"], **results.get("extra", {})}.items()}
    for logger in targets:
        logger.log_table(key="eval/table", columns=["row", *keys], data=data)
        if results["files"].get("grid"):
            logger.log_image(key="eval/grid", images=[results["files"]["grid"]])
        logger.experiment.summary.update(summary)


def post_fit_evaluation(module, run_dir: Path, checkpoint: Path, datamodule, loggers=()) -> str:
    """The evaluation after training (``run.evaluate``) of an evaluable method, into
    ``run_dir/eval`` and to the run's W&B loggers; returns the line ``voice2face train``
    prints."""
    cfg = module.cfg
    judge = cfg.get("eval", {}).get("judge")
    if not judge or not Path(judge).is_file():
        return (f"voice2face: no evaluation (no judge at eval.judge={judge}); train one with "
                f"`voice2face train face --export {judge}` and run `voice2face evaluate --ckpt "
                f"{checkpoint} --out {Path(run_dir) / 'eval'}`")
    device = "cuda" if torch.cuda.is_available() and cfg["trainer"]["accelerator"] != "cpu" else "cpu"
    try:
        r = evaluate(checkpoint, Path(run_dir) / "eval", datamodule.root, judge,
                     batch_size=cfg["data"]["eval_batch_size"],
                     num_workers=cfg["data"]["num_workers"], seed=cfg["seed"], device=device,
                     grid_identities=cfg["eval"]["grid_identities"],
                     grid_utterances=cfg["eval"]["grid_utterances"])
    except CheckpointError as e:  # e.g. a part that the method was trained without
        return f"voice2face: no evaluation ({e})"
    log_evaluation(r, loggers)
    row = r["rows"]["method"]
    grid = f", grid {r['files']['grid']}" if r["files"]["grid"] else ""
    return (f"voice2face: evaluated on the test split: 1:2 match {row['match_1to2']:.3f} "
            f"(chance 0.5); table {r['files']['table']}{grid}")


def _device(text: str) -> str:
    """An argparse ``type``: auto, cpu, cuda or cuda:N."""
    index = text[len("cuda:"):] if text.startswith("cuda:") else None
    if text in ("auto", "cpu", "cuda") or (index is not None and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: expected auto, cpu, cuda or "
                                     f"cuda:N")


def _resolve_device(device: str) -> str:
    """The device to evaluate on; a GPU that torch cannot use is refused before any work."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch cannot use a GPU here (torch "
                            f"{torch.__version__}, CUDA build {torch.version.cuda}); pass "
                            f"--device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                            f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


# how the data module says a corrupt shard can be used in training; evaluate measures every
# test sample, so it says what evaluate's user can do instead
_SKIP_CORRUPT = "; rewrite it, or set data.skip_corrupt=true"


@reports_errors("voice2face evaluate")
def main(argv: list[str] | None = None) -> int:
    from voice2face.errors import check_output_path, int_in
    parser = argparse.ArgumentParser(prog="voice2face evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint of a trained method")
    parser.add_argument("--out", required=True, help="folder for metrics.json, metrics.md, grid.png")
    parser.add_argument("--data", help="dataset folder (default: the checkpoint's training data)")
    parser.add_argument("--allow-other-data", action="store_true",
                        help="evaluate on --data even when it is not the data the checkpoint "
                             "was trained on (another identity table)")
    parser.add_argument("--judge", help="face checkpoint (default: DATA/pretrained/face.ckpt)")
    parser.add_argument("--decoder", help="replace the method's face decoder with this checkpoint "
                        "(methods with a `decoder` part: regression)")
    parser.add_argument("--batch-size", type=int_in(1, 65536), default=64)
    parser.add_argument("--workers", type=int_in(0, 256), default=0, help="DataLoader workers")
    parser.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    parser.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--grid-identities", type=int_in(0, 1000), default=8)
    parser.add_argument("--grid-utterances", type=int_in(1, 100), default=4)
    args = parser.parse_args(argv)
    device = _resolve_device(args.device)
    check_output_path("--out", Path(args.out), folder=True)
    if args.data and Path(args.data).exists() and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} is a file; expected a dataset folder")
    from datamodules import DataFormatError
    try:
        r = evaluate(args.ckpt, args.out, args.data, args.judge, batch_size=args.batch_size,
                     num_workers=args.workers, seed=args.seed, device=device,
                     grid_identities=args.grid_identities, grid_utterances=args.grid_utterances,
                     parts={"decoder": args.decoder} if args.decoder else None,
                     allow_other_data=args.allow_other_data)
    except DataFormatError as e:
        head, found, _ = str(e).partition(_SKIP_CORRUPT)
        if not found:
            raise
        raise DataFormatError(f"{head}; evaluation measures every test sample: rewrite the "
                              f"data (the same `voice2face synth` command rewrites a damaged "
                              f"shard of a synthetic world; `voice2face prepare --overwrite` "
                              f"rewrites prepared data)") from None
    print(markdown_table(r))
    print(f"voice2face: wrote {r['files']['json']}, {r['files']['table']}"
          + (f", {r['files']['grid']}" if r["files"]["grid"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
