"""An evaluation's results as files (``metrics.json``, ``metrics.md``, ``grid.png``), as a
Markdown table, and to W&B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from voice2face.atomic import write_bytes
from voice2face.grid import GridCollector, save_png
from voice2face.evaluation.protocol import RETRIEVAL_GALLERY, RETRIEVAL_K, RETRIEVAL_KEY

TABLE_COLUMNS = [  # (key, header)
    ("match_1to2", "1:2 match"), ("match_1to2_gender", "1:2 match, same gender"),
    ("recall@1", "R@1"), ("recall@5", "R@5"), ("recall@10", "R@10"),
    ("gender_acc", "gender acc"), ("cosine", "cosine to speaker"),
    ("identity_top1", "known top-1"), ("identity_top5", "known top-5"),
    ("frechet", "Fréchet (judge)"),
]
# the judge's attribute read-outs (synthetic worlds): a second table, "attribute agreement"
ATTRIBUTE_COLUMNS = [  # (key, header)
    ("attribute_match_1to2", "1:2 (attributes)"),
    ("attribute_match_1to2_gender", "1:2 same gender (attributes)"),
    ("attribute_gender_acc", "gender acc"), ("attribute_r2_age", "R² age"),
    ("attribute_r2_size", "R² size"),
]


def write_results(out: Path, results: dict[str, Any], grid: GridCollector
                  ) -> dict[str, str | None]:
    """``metrics.json``, ``metrics.md`` and (with faces in it) ``grid.png`` into ``out``;
    returns their paths (``grid``: None without one)."""
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "metrics.json", (json.dumps(results, indent=1) + "\n").encode())
    write_bytes(out / "metrics.md", markdown_table(results).encode())
    image = grid.image()
    if image is not None:
        save_png(image, out / "grid.png")
    return {"json": str(out / "metrics.json"), "table": str(out / "metrics.md"),
            "grid": str(out / "grid.png") if image is not None else None}


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, method row first, then the reference rows."""
    labels = {"method": results["label"],
              "proposal_faces": "proposal faces, unchanged (the voice ignored)",
              "real_faces": "real faces (judge, held-out photo)", "chance": "chance",
              "ceiling": "ceiling (synthetic world)"}
    lines = [f"Test split of `{results['data']}`: {results['counts']['test_utterances']} utterances "
             f"of {results['counts']['test_identities']} identities, "
             f"{results['counts']['test_gallery_images']} gallery images; known speakers: "
             f"{results['counts']['known_utterances']} utterances. Judge `{results['judge']}`, "
             f"seed {results['seed']}, checkpoint `{results['checkpoint']}`.", "",
             *_table(results["rows"], TABLE_COLUMNS, labels)]
    attributes = _table(results["rows"], ATTRIBUTE_COLUMNS, labels, every_row=False)
    if attributes:
        lines += ["", "Attribute agreement: the judge's read-outs of (gender, age, size), fitted "
                  "on the training gallery, matched 1:2 through the world's Bayes rule and "
                  "compared with the speakers' true attributes.", "", *attributes]
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


def _table(rows: dict[str, dict[str, float]], columns, labels: dict[str, str],
           every_row: bool = True) -> list[str]:
    """The Markdown lines of ``rows`` under the ``columns`` that some row has (none: []);
    without ``every_row``, only the rows that have one of them."""
    cols = [(k, h) for k, h in columns if any(k in r for r in rows.values())]
    if not cols and not every_row:
        return []
    lines = ["| | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in rows.items():
        if not every_row and not any(k in row for k, _ in cols):
            continue
        cells = [f"{row[k]:.3f}" if k in row else "—" for k, _ in cols]
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return lines


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
