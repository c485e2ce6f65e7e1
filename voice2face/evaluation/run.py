"""``evaluate``: the protocol's steps in order, for one checkpoint; ``post_fit_evaluation``:
the same after training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from voice2face.constants import default_judge
from voice2face.evaluation import attributes as A
from voice2face.evaluation import protocol as P
from voice2face.evaluation.chance import Split, chance_row, unrelated_cosine
from voice2face.evaluation.report import log_evaluation, write_results
from voice2face.methods import CheckpointError
from voice2face.methods.base import data_info, read_checkpoint_meta
from voice2face.synth.audit import hidden_attributes


def evaluate(ckpt: str | Path, out: str | Path, data: str | Path | None = None,
             judge: str | Path | None = None, *, batch_size: int = 64, num_workers: int = 0,
             seed: int = 0, device: str = "cpu", grid_identities: int = 8,
             grid_utterances: int = 4, parts: dict[str, str | Path] | None = None,
             allow_other_data: bool = False, attributes: bool = True,
             log=print) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split; writes metrics.json, metrics.md, grid.png.
    ``parts``: ``{name: checkpoint}`` replacing the method's parts (``replace_part``).
    Data other than the checkpoint's (by its fingerprint) is a ``CheckpointError`` unless
    ``allow_other_data``.

    On a synthetic world, the faces the judge scores (not a method measured in its own
    space) are also read by the judge's attribute read-outs (issue 26,
    ``attributes.attribute_rows``): the method's, the real faces' and the unchanged proposals'
    rows get ``attributes.ATTRIBUTE_KEYS`` (1:2 in attribute space through the world's Bayes
    rule, unstratified and same gender; gender accuracy and R² of age and size against the
    speakers' true z), the chance row their chance levels and the ceiling row the world's
    ceiling as the attribute matching's. That pass comes after every other one and leaves
    their numbers as they were. Data that is no synthetic world (real data: its gender-only
    version is not here yet; a manifest that names a world other than its identity table's)
    and ``attributes=False`` skip it: no attribute key at all."""
    import lightning as L

    from datamodules import VoiceFaceDataModule

    started = time.time()
    meta = read_checkpoint_meta(ckpt)
    method = P.load_evaluated(ckpt, parts)
    data = Path(data or meta["data"]["root"])
    dm = VoiceFaceDataModule(data, batch_size=batch_size, eval_batch_size=batch_size,
                             num_workers=num_workers, spectrogram=method.needs_spectrogram)
    info = data_info(dm)
    P.check_data(ckpt, meta["data"], info, allow_other_data, log,
                 own_root=Path(meta["data"]["root"]) == data)
    judge_path = Path(judge) if judge else default_judge(data)
    # the memory layout the method trained in (model.channels_last), for its nets and the judge
    layout = torch.channels_last if method.channels_last else torch.contiguous_format
    subject = P.Subject(method.to(device, memory_format=layout),
                        P.load_judge_of(judge_path, data, info).to(device, memory_format=layout))
    L.seed_everything(seed, workers=True, verbose=False)

    chosen = P.chosen_identities([i["index"] for i in dm.identities if i["split"] == "test"],
                                 grid_identities, seed)
    grid = P.evaluation_grid(dm, chosen, grid_utterances)
    gallery = P.gallery_pass(subject, dm, grid, device)
    rows = P.metric_rows(gallery, proposal=method.needs_proposal, judged=subject.judged,
                         num_classes=info["num_train_identities"], seed=seed)
    probes = P.probe_pass(subject, dm, rows, gallery, grid, chosen, device)
    P.sweep_row(method, grid, chosen, probes.sweep_voices, device)
    n_known = P.known_split(subject, dm, rows, device)

    errors: dict[str, str] = {}
    results: dict[str, Any] = {"rows": {name: P.compute_row(m, errors) for name, m in rows.items()}}
    results["extra"] = {k: float(v) for k, v in method.extra_metrics(dm, device).items()}
    retrieval, retrieval_gallery = P.probe_retrieval(probes, gallery, seed, errors)
    for name, why in errors.items():
        log(f"voice2face evaluate: no {name}: {why}")
    probe = gallery.probe
    cosine = unrelated_cosine(gallery.judge[probe], gallery.identity[probe],
                              P.centroids(gallery.judge, gallery.identity))
    results["rows"]["chance"] = chance_row(rows["method"], results["rows"]["method"],
                                           Split(gallery.image_counts(), P.stack(probes.gender),
                                                 cosine))
    for name, value in retrieval.items():
        results["rows"][name][P.RETRIEVAL_KEY] = value
    ceilings = dm.manifest.get("ceilings") or {}
    if ceilings:
        results["rows"]["ceiling"] = {k: float(v) for k, v in ceilings.items()
                                      if k.startswith("match_")}
    world = hidden_attributes(data, dm.identities) if attributes and subject.judged else None
    if world is not None:
        for name, values in A.attribute_rows(subject, dm, world, gallery, probes,
                                             device).items():
            results["rows"][name].update(values)
        results["rows"]["chance"].update(A.attribute_chance(P.stack(probes.gender)))
        if "ceiling" in results["rows"]:
            results["rows"]["ceiling"].update(
                {f"attribute_{k}": v for k, v in list(results["rows"]["ceiling"].items())})
    if probes.similarity["to_speaker"]:
        results["proposal_similarity"] = {k: float(torch.cat(v).mean())
                                          for k, v in probes.similarity.items()}
    results.update({
        "checkpoint": str(ckpt), "method": method.method, "variant": method.variant,
        "label": method.label, "data": str(data), "judge": str(judge_path), "seed": seed,
        "counts": {"test_utterances": probes.count,
                   "test_identities": len(gallery.image_counts()),
                   "test_gallery_images": len(gallery.identity), "known_utterances": n_known,
                   "real_face_probes": int(probe.sum()),
                   **({"retrieval_gallery_images": retrieval_gallery}
                      if retrieval_gallery is not None else {})},
        "not_computed": errors, "seconds": round(time.time() - started, 1),
    })
    results["files"] = write_results(Path(out), results, grid)
    return results


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
