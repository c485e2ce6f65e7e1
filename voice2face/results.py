"""``voice2face results [--data DIR] [--out docs/results.md] [key=value ...]``: every method,
one protocol, one table.

For every evaluable method of the registry and each of its variants (the rows of its
``MethodSpec``, in the registry's order: the CAE once per gating granularity, the regression
once per feature loss), this trains the method on ``--data`` with the ``key=value`` overrides
(or reuses a finished run of the same settings), evaluates it with
``voice2face.evaluation.evaluate`` under one protocol (the same judge, test trials, batch size
and seed for every row), and writes one Markdown table with the reference rows, a table of
the papers' published numbers, and a figure of one test speaker per row with each method's
face (``--figure``). On a synthetic world it also writes the instrument table
(``voice2face.evaluation.instrument``: the o-oracle, the voice-embedder oracle, the
gender-only control, real faces, chance and the ceiling, through the judge's embedding and in
attribute space), and beside each chance→ceiling column of the main table a chance→bound
column, the bound being the voice-embedder oracle's 1:2 through the judge.

The pretrained nets the rows' configs and the judge name (``DATA/pretrained/*.ckpt``, the
registry's ``pretrained_needs``) are the Makefile's targets: ``make results`` builds the
missing ones first, with ``PRETRAIN_ARGS``; this command only checks that they exist.

**Reuse.** Each row trains in ``<run.root>/results-<row>-<data>-<digest>/``, where the
digest is of the run's identity: its resolved config (the ``run`` and ``logger`` sections
aside: where a run is kept and how it logs change nothing it learns), the SHA-1 of the
data's ``manifest.json`` and the SHA-1 of each file the config's ``model`` section names (the
pretrained voice embedder, target network, decoder). A run folder is **finished** when

1. its ``config.yaml`` is that config (same comparison),
2. its ``results-run.json`` exists and records the same identity: the record is written only
   after training returned, i.e. after ``trainer.max_steps`` were reached and
   ``checkpoints/final.ckpt`` was saved, and it holds the training's wall time, and
3. its ``checkpoints/final.ckpt`` exists and says the row's method and the data's
   fingerprint.

A finished run is reused with its recorded training time; an unfinished one (interrupted) is
resumed from its last checkpoint; a changed config, data or pretrained net gives another
digest, so a new run (the old folder stays, and is reused if the settings come back). A
change to a method's code is not part of the identity: ``--retrain ROWS`` trains those rows
again, each old folder renamed ``<folder>.replaced-<time>`` beside the new one. A
row with no run of its own reuses a finished run of the Makefile's pretraining with the same
config and data (``pretraining_twin``: the ``dimnet`` row is then the very voice embedder the
GAN, CAE and regression rows read in the ``cpu`` profile), writing its ``results-run.json`` there. The
evaluation is reused likewise when ``results-eval/key.json`` records the same checkpoint,
judge, data, seed, batch size and device. The instrument is measured once per table with the
protocol's judge and the voice embedder of the ``gan`` row's config (``model.voice``, which the
CAE rows, and the regression rows of the ``cpu`` profile, read too) and kept with the runs (``<run.root>/results-instrument-<data>.json``), reused
while it records the same SHA-1s of manifest, judge and voice embedder, batch size and device.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from datamodules import VoiceFaceDataModule, read_manifest
from voice2face.atomic import write_bytes
from voice2face.config import load_config, string_leaves
from voice2face.constants import default_judge
from voice2face.errors import UserError, reports_errors
from voice2face.evaluation import (RETRIEVAL_GALLERY, RETRIEVAL_K, RETRIEVAL_KEY,
                                   chosen_identities, evaluate)
from voice2face.evaluation import instrument as instr
from voice2face.grid import column_grid, save_png
from voice2face.methods import METHODS, SPECS, Evaluation, MethodModule, Voices, load_method
from voice2face.methods.base import (CheckpointError, data_info, proposal_faces,
                                     read_checkpoint_meta)
from voice2face.training import train, training_seconds

RECORD = "results-run.json"  # in a run folder: written when its training has finished
EVAL = "results-eval"        # in a run folder: the evaluation of this protocol


# --- what is compared ------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One row: a registered method and the overrides that make its variant."""

    key: str                         # the row's name in logs, folders and --only
    method: str                      # registry name
    overrides: tuple[str, ...] = ()  # applied after the user's, so the variant holds

    @property
    def cls(self) -> type[MethodModule]:
        return METHODS[self.method]


def entries() -> list[Entry]:
    """The rows of every evaluable method of the registry (``MethodSpec.rows``), in its
    order."""
    return [Entry(key, spec.name, overrides) for spec in SPECS.values() if spec.evaluable
            for key, overrides in spec.rows()]


def select(all_entries: list[Entry], only: str | None, flag: str = "--only") -> list[Entry]:
    if not only:
        return all_entries
    keys = [k.strip() for k in only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in {e.key for e in all_entries}]
    if unknown:
        raise UserError(f"{flag}: unknown row(s) {', '.join(unknown)}; the rows are "
                        f"{', '.join(e.key for e in all_entries)}")
    return [e for e in all_entries if e.key in keys]


# --- run identity and the finished-run rule --------------------------------------------------

def sha1_file(path: str | Path) -> str:
    st = os.stat(path)
    return _sha1(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=None)
def _sha1(path: str, mtime_ns: int, size: int) -> str:  # once per file version
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides what a run learns."""
    return {k: v for k, v in config.items() if k not in ("run", "logger")}



def run_identity(cfg: DictConfig, manifest_sha1: str) -> dict[str, Any]:
    config = comparable(OmegaConf.to_container(cfg, resolve=True))
    inputs = {p: sha1_file(p) for p in sorted(set(string_leaves(config.get("model", {}))))
              if Path(p).is_file()}
    return {"config": config, "manifest_sha1": manifest_sha1, "inputs": inputs}


def digest(identity: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def finished(folder: Path, identity: dict[str, Any], method: str, fingerprint: str
             ) -> tuple[bool, str]:
    """Whether ``folder`` holds a finished run of ``identity`` (the module docstring's rule),
    and why not."""
    if not (folder / "config.yaml").is_file():
        return False, "no run folder" if not folder.exists() else "no config.yaml"
    saved = comparable(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=True))
    if saved != identity["config"]:
        return False, "its config.yaml differs"
    record = folder / RECORD
    if not record.is_file():
        return False, f"no {RECORD}: its training did not finish"
    if json.loads(record.read_text()).get("identity") != identity:
        return False, f"{RECORD} records other data or pretrained nets"
    final = folder / "checkpoints" / "final.ckpt"
    try:
        meta = read_checkpoint_meta(final)
    except CheckpointError as e:
        return False, str(e)
    if meta["method"] != method or meta.get("data", {}).get("fingerprint") != fingerprint:
        return False, f"{final} is of another method or data"
    return True, "finished"


def pretraining_twin(cfg: DictConfig, identity: dict[str, Any], method: str, fingerprint: str
                     ) -> Path | None:
    """A finished run of the Makefile's pretraining (``<run.root>/pretrain-<net>-<data>``)
    with this row's config and data, or None: the ``dimnet`` row and the voice embedder the
    GAN, CAE and regression rows read are the same run when their settings agree, so it is not trained
    twice. Its final checkpoint must say the row's method and the data's fingerprint."""
    root, data = Path(cfg.run.root), Path(cfg.data.root).name
    for folder in sorted(root.glob(f"pretrain-*-{data}")):
        config = folder / "config.yaml"
        if not config.is_file() or comparable(OmegaConf.to_container(
                OmegaConf.load(config), resolve=True)) != identity["config"]:
            continue
        final = folder / "checkpoints" / "final.ckpt"
        try:
            meta = read_checkpoint_meta(final)
        except CheckpointError:
            continue  # unfinished
        if final.stat().st_mtime < (Path(cfg.data.root) / "manifest.json").stat().st_mtime:
            continue  # trained before the data was made again (make's rule)
        if meta["method"] == method and meta.get("data", {}).get("fingerprint") == fingerprint:
            return folder
    return None


# --- one row: train or reuse, then evaluate or reuse -----------------------------------------

@dataclass
class RowResult:
    """What the table shows of one row, and where it came from."""

    entry: Entry
    folder: Path
    metrics: dict[str, Any]          # the row's metrics.json
    metrics_path: Path
    record: dict[str, Any]           # the run's results-run.json
    trained_now: bool = False
    evaluated_now: bool = False

    @property
    def evaluation(self) -> Evaluation:
        return self.entry.cls.evaluation

    @property
    def train_seconds(self) -> float:
        return float(self.record["train_seconds"])

    @property
    def parameters(self) -> int:
        return int(self.record["parameters"]["trained"])


def trained_parameters(module) -> dict[str, Any]:
    """The parameters a run optimises (``requires_grad``): frozen pretrained parts (voice
    embedder, target network, decoder) are not counted; critics and classifiers are. By
    top-level net, and the total (shared parameters once)."""
    by_net = {name: sum(p.numel() for p in child.parameters() if p.requires_grad)
              for name, child in module.named_children()}
    return {"trained": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "by_net": {k: v for k, v in by_net.items() if v}}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def ensure_run(entry: Entry, cfg: DictConfig, identity: dict[str, Any], fingerprint: str,
               command: str, log=print, retrain: bool = False
               ) -> tuple[Path, dict[str, Any], bool]:
    """The finished run folder of ``entry`` (trained now unless one exists, the row's own or
    a pretraining run of the same settings, ``pretraining_twin``), its record, and whether
    it was trained now. ``command``: the equivalent ``voice2face train`` line. ``retrain``:
    train again, the row's folder (finished or not) set aside as ``<folder>.replaced-<time>``
    and no pretraining run taken for it (``--retrain``: the code changed, the settings not)."""
    folder = Path(cfg.run.root) / cfg.run.name
    if retrain and folder.exists():
        aside = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        folder.rename(aside)
        log(f"voice2face results: {entry.key}: --retrain: {folder} set aside as {aside}")
    done, why = finished(folder, identity, entry.method, fingerprint)
    twin = None
    if not done and not retrain and not (folder / "checkpoints" / "last.ckpt").is_file():
        twin = pretraining_twin(cfg, identity, entry.method, fingerprint)
    if twin is not None:
        if not finished(twin, identity, entry.method, fingerprint)[0]:
            final = twin / "checkpoints" / "final.ckpt"
            write_record(twin, entry, cfg, identity, final, training_seconds(final) or math.nan,
                         False, command, pretraining_run=True)
        folder, done = twin, True
    if done:
        record = json.loads((folder / RECORD).read_text())
        log(f"voice2face results: {entry.key}: reusing {folder} (finished; trained in "
            f"{record['train_seconds']:.1f} s)")
        return folder, record, False
    if folder.exists() and why == "its config.yaml differs":  # the digest names this config
        raise UserError(f"{folder}: its config.yaml is not the config of the row "
                        f"{entry.key}; move the folder away")
    resumed = (folder / "checkpoints" / "last.ckpt").is_file()
    log(f"voice2face results: {entry.key}: {'resuming' if resumed else 'training'} in {folder} "
        f"({why})")
    started = time.time()
    final = train(cfg)
    # every invocation that trained this run, when resumed (the checkpoints' Timer state)
    seconds = training_seconds(final) or time.time() - started
    return folder, write_record(folder, entry, cfg, identity, final, seconds, resumed,
                                command), True


def write_record(folder: Path, entry: Entry, cfg: DictConfig, identity: dict[str, Any],
                 final: Path, seconds: float, resumed: bool, command: str, **extra
                 ) -> dict[str, Any]:
    """Write (and return) ``folder``'s ``RECORD``: the run of ``entry`` has finished."""
    module = load_method(final, expect=entry.method)
    record = {
        "entry": entry.key, "method": entry.method, "label": module.label,
        "identity": identity, "digest": digest(identity),
        "train_seconds": round(seconds, 1), "resumed": resumed,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "max_steps": int(cfg.trainer.max_steps), "parameters": trained_parameters(module),
        "command": command, **extra,
    }
    _write_json(folder / RECORD, record)
    return record


@dataclass
class Protocol:
    """What every row is evaluated with."""

    data: Path
    judge: Path
    seed: int = 0
    batch_size: int = 64
    workers: int = 0
    device: str = "cpu"
    manifest_sha1: str = ""
    judge_sha1: str = field(default="", repr=False)

    def key(self, checkpoint: Path) -> dict[str, Any]:
        return {"checkpoint_sha1": sha1_file(checkpoint), "judge_sha1": self.judge_sha1,
                "manifest_sha1": self.manifest_sha1, "data": str(self.data), "seed": self.seed,
                "batch_size": self.batch_size, "device": self.device}


def ensure_evaluation(entry: Entry, folder: Path, protocol: Protocol, log=print
                      ) -> tuple[Path, dict[str, Any], bool]:
    out = folder / EVAL
    final = folder / "checkpoints" / "final.ckpt"
    key = protocol.key(final)
    metrics = out / "metrics.json"
    if metrics.is_file() and (out / "key.json").is_file() and \
            json.loads((out / "key.json").read_text()) == key:
        log(f"voice2face results: {entry.key}: reusing the evaluation {metrics}")
        return metrics, json.loads(metrics.read_text()), False
    log(f"voice2face results: {entry.key}: evaluating on the test split of {protocol.data}")
    (out / "key.json").unlink(missing_ok=True)
    evaluate(final, out, protocol.data, protocol.judge, batch_size=protocol.batch_size,
             num_workers=protocol.workers, seed=protocol.seed, device=protocol.device, log=log)
    _write_json(out / "key.json", key)
    return metrics, json.loads(metrics.read_text()), True


# --- the instrument: bounds and controls, once per table ------------------------------------

# Bumped when what the instrument computes changes, so that a kept one is measured again.
INSTRUMENT_VERSION = 2  # 2: the posterior-sample and private-trait rows, the Fréchet column


@dataclass
class Instrument:
    """The instrument of the table's data (``instr.instrument``'s result), what it was
    measured with and where it is kept."""

    result: dict[str, Any]
    voice: Path
    cache: Path
    measured_now: bool = False


def instrument_cache(runs: Path, data: Path) -> Path:
    """Where the instrument of ``data`` is kept: with the runs (``run.root``), like the
    evaluations, not beside the table it feeds."""
    return Path(runs) / f"results-instrument-{Path(data).name}.json"


def instrument_voice(chosen: list[Entry], configured: list[tuple[DictConfig, dict, str]],
                     data: Path, overrides: list[str]) -> Path | None:
    """The voice embedder the instrument estimates o from: ``model.voice`` of the ``gan``
    row's config as this command builds it (its profile's; the CAE rows read the same one),
    else of the first row run that names one, else of the gan config these overrides make;
    None when they make none."""
    gan = next(e for e in entries() if e.method == "gan")
    named = [c for e, (c, _, _) in zip(chosen, configured) if e.key == gan.key] + \
        [c for c, _, _ in configured if c.model.get("voice")]
    if not named:
        try:
            named = [load_config(gan.method, train_overrides(gan, data, overrides))]
        except UserError:  # an override of the rows run that the gan config does not have
            return None
    return Path(named[0].model.voice)


def instrument_key(protocol: Protocol, voice: Path) -> dict[str, Any]:
    """What the instrument depends on: the data, the judge and the voice embedder (by their
    files' SHA-1s), and how it was measured."""
    return {"manifest_sha1": protocol.manifest_sha1, "judge_sha1": protocol.judge_sha1,
            "voice_sha1": sha1_file(voice), "batch_size": protocol.batch_size,
            "device": protocol.device, "version": INSTRUMENT_VERSION}


def ensure_instrument(protocol: Protocol, voice: Path, cache: Path, log=print) -> Instrument:
    """The instrument of ``protocol``'s data and judge with ``voice``: the one kept in
    ``cache`` if it records the same ``instrument_key``, else measured now and kept there
    (written whole or not at all)."""
    key = instrument_key(protocol, voice)
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("key") == key:
            log(f"voice2face results: reusing the instrument {cache}")
            return Instrument(kept["instrument"], voice, cache)
    log(f"voice2face results: measuring the instrument on {protocol.data} (judge "
        f"{protocol.judge}, voice embedder {voice})")
    result = instr.measure(protocol.data, protocol.judge, voice,
                           batch_size=protocol.batch_size, workers=protocol.workers,
                           device=protocol.device)
    write_bytes(cache, (json.dumps({"key": key, "judge": str(protocol.judge), "voice": str(voice),
                                    "instrument": result}, indent=1) + "\n").encode())
    return Instrument(result, voice, cache, measured_now=True)


def table_instrument(protocol: Protocol, voice: Path | None, cache: Path, log=print
                     ) -> Instrument | str:
    """``ensure_instrument``, or the sentence that says why the table has none."""
    if read_manifest(protocol.data).get("kind") != "synthetic":
        return ("the instrument reads the attributes a synthetic world hides (its faces' z, "
                "its voices' o); this data has none")
    if voice is None:
        return "no row's config names a voice embedder (`model.voice`) to estimate o from"
    if not voice.is_file():
        return (f"no voice embedder at {voice} (`model.voice` of the gan row's config) to "
                f"estimate o from")
    return ensure_instrument(protocol, voice, cache, log)


def instrument_markdown(measured: Instrument | str) -> list[str]:
    """The Instrument section: the table and what it means, or why there is none."""
    lines = ["## Instrument: bounds and controls", ""]
    if isinstance(measured, str):
        return lines + [f"No instrument: {measured}.", ""]
    r = measured.result
    lines += [
        "What a generator could score through this judge, measured as `voice2face evaluate` "
        "measures the rows above (one face per test utterance against every single test "
        "gallery image) from the attributes the synthetic world hides: z of each face, the o "
        "each voice observes (`voice2face.evaluation.instrument`). Two instruments: the "
        "judge's embedding (1:2 by cosine, the table above), and its attribute read-outs (a "
        "ridge regression from the judge embedding of one face to the world's attributes, "
        "fitted on the training gallery) matched by the world's Bayes rule; the next three "
        "columns compare the probes' read-outs with the speakers' true attributes.", "",
    ]
    lines += _md_table(["probe"] + [h for _, _, h in instr.COLUMNS],
                       [[instr.ROWS[key]] + [fmt(row.get(k)) for k, _, _ in instr.COLUMNS]
                        for key, row in r["rows"].items()])
    r2 = ", ".join(f"{k.rsplit('_', 1)[1]} {v:.3f}" for k, v in r["readout_r2"].items())
    voice_r2 = ", ".join(f"{k} {v:.3f}" for k, v in r["voice_r2"].items())
    lines += [
        "",
        "- **o-oracle**: the mean training face of the attributes o that the speaker's voice "
        "observed, a generator that heard everything a voice reveals; with exact read-outs it "
        "would reach the ceiling in attribute space, so what it lacks is the judge's.",
        f"- **voice-embedder oracle**: the same with o estimated from `{measured.voice}` (the "
        "voice embedder the GAN and CAE rows, and the `cpu` profile's regression rows, read) "
        "by a ridge probe fitted on the training "
        "utterances and calibrated on the validation ones: the bound of the chance→bound "
        "columns (1:2 through the judge).",
        "- **posterior mean**: E[face | o] instead, the squared-error optimum, which shrinks "
        "toward the mean face: a comparison row.",
        "- **posterior sample**: one real training face drawn from p(face | o) instead, "
        "what a generator that drew real-looking faces, private traits and all, would show: "
        "its Fréchet distance is real faces', its matching what those traits cost.",
        "- **private traits**: the oracle's face plus the private traits of a random "
        "training face (its residual from a linear model of the training faces in their "
        "attributes), what a generator that sets the attributes from the voice and draws the "
        "rest at random would show.",
        "- **Fréchet (judge)**: as in the table above, of the probes normalised to unit "
        "length (a face's judge embedding is): how far from real faces the faces that match "
        "best are.",
        "- **gender-only control**: the mean training face of the speaker's gender, what a "
        "generator that knows the gender and nothing else draws: chance on same-gender "
        "matching.",
        "- **real faces**: a held-out photo of the speaker, the real-faces row above.",
        f"- The read-outs' R² on single test gallery faces: {r2}; the voice probe's R² of o on "
        f"the test utterances: {voice_r2}.",
        f"- Measured in {fmt_seconds(float(r.get('seconds', 0)))}"
        + (" by this invocation" if measured.measured_now else " (reused)")
        + f" and kept in `{measured.cache}`, keyed by the SHA-1s of the manifest, the judge "
        "and the voice embedder.",
        "",
    ]
    return lines


# --- the table -------------------------------------------------------------------------------

# (key in metrics.json rows, header); "fraction:<key>" is (x - 0.5) / (ceiling - 0.5),
# "bound:<key>" is (x - 0.5) / (bound - 0.5) with the instrument's bound (``instr.BOUND``)
COLUMNS = [
    ("match_1to2", "1:2"), ("match_1to2_gender", "1:2 same gender"),
    ("fraction:match_1to2", "1:2, chance→ceiling"), ("bound:match_1to2", "1:2, chance→bound"),
    ("fraction:match_1to2_gender", "same gender, chance→ceiling"),
    ("bound:match_1to2_gender", "same gender, chance→bound"),
    ("frechet", "Fréchet (judge)"),
    ("recall@1", "R@1"), ("recall@5", "R@5"), ("recall@10", "R@10"),
    (RETRIEVAL_KEY, f"top-{RETRIEVAL_K} of {RETRIEVAL_GALLERY} images"),
    ("gender_acc", "gender acc"), ("identity_top1", "known top-1"),
    ("identity_top5", "known top-5"),
]
# the columns a method measured in its own space (no faces) is shown in: matching only (not
# chance→bound: the bound is of faces through the judge)
MATCHING = {"match_1to2", "match_1to2_gender", "fraction:match_1to2",
            "fraction:match_1to2_gender", "recall@1", "recall@5", "recall@10"}
REFERENCES = [  # (row in metrics.json, label, from a run that has it)
    ("proposal_faces", "proposal faces, unchanged (the voice ignored)"),
    ("real_faces", "real faces (judge, held-out photo)"),
    ("chance", "chance"),
    ("ceiling", "ceiling of the world"),
]
TABLE_HEADER = ["method"] + [h for _, h in COLUMNS] + ["training time", "trained parameters"]

# The papers' own numbers on VoxCeleb/VGGFace (or AVSpeech), with their own encoders, judges
# and splits: not comparable with a synthetic world. Each row: (paper, method here, what is
# measured: protocol, gallery, split; value; unit; where in the paper). The papers are the
# plain-text copies in shared/papers/ (its README names them), except the rows of methods
# not implemented here, context only: the two strongest published voice-face matchers, without
# a file here.
# The Speech2Face-style report (shared/papers/000, Turk. J. Comput. Math. Educ. 12(13), 2021)
# gives no numbers (its results are qualitative), so it has no row.
_WEN = "Wen, Singh & Raj, NeurIPS 2019"
_CAE = "Liang, Yu, Xu, Raj & Singh, ISVC 2020 (CAE)"
_REG = "Nemani, Saini & Jha, \"Face Reconstruction from Speech\" (course report, no venue/year)"
_DFG = "Thai, Manisha, Reddy & Reddy, \"Deep Face Gen\" (no venue/year)"
_R3 = "Recall@K table (test set, L1-distance row)"
PUBLISHED: list[tuple[str, str, str, str, str, str]] = [
    # (paper, method here, measure, value as printed, unit, where in the paper)
    (_WEN, "GAN (gan)", "1:2 matching, generated face as the probe; test split, 189 unseen "
     "speakers, 2,353,560 trials, any imposter", "76.07", "%", "Table 3; Sec. 4.2"),
    (_WEN, "GAN (gan)", "the same, imposter of the speaker's gender", "59.69", "%", "Table 3"),
    (_WEN, "GAN (gan)", "1:2 matching on about 50k training-split trials, any imposter",
     "96.83", "%", "Table 3"),
    (_WEN, "GAN (gan)", "the same on training trials, same-gender imposter", "93.98", "%",
     "Table 3"),
    (_WEN, "GAN (gan)", "known-speaker identity of the generated face, top-1; 4,620 test "
     "recordings of the 924 training speakers", "61.7", "%", "Sec. 4.2 (text, no table)"),
    (_WEN, "GAN (gan)", "the same, top-5", "82.3", "%", "Sec. 4.2 (text, no table)"),
    (_WEN, "GAN (gan)", "gender of the generated face matches the speaker's; 21,850 test "
     "segments, face classifier 98.97 % on real faces", "96.45", "%",
     "Sec. 4.2 (text, no table)"),
    ("DIMNets-I (Wen et al., ICLR 2019), as quoted by " + _WEN,
     "DIMNet (dimnet, own space; the paper's identity-only variant)",
     "1:2 voice-face matching in the embedding space, test speakers, any imposter",
     "83.45", "%", "Table 3 of Wen, Singh & Raj"),
    ("DIMNets-I (Wen et al., ICLR 2019), as quoted by " + _WEN,
     "DIMNet (dimnet, own space; the paper's identity-only variant)",
     "the same, same-gender imposter", "70.91", "%", "Table 3 of Wen, Singh & Raj"),
    (_CAE, "CAE (cae, full gating)", "face retrieval: the generated face through the trained "
     "identity classifier, true face in the top 5 of a 500-image gallery", "21", "%",
     "Sec. 4.3 (text, no table)"),
    (_CAE, "CAE (cae, full gating)", "cosine of 64-d face embeddings, generated face vs. the "
     "proposal (input) face", "0.32", "", "Table 3"),
    (_CAE, "CAE (cae, full gating)", "cosine, generated face vs. the voice's own face", "0.42",
     "", "Table 3"),
    (_CAE, "CAE (cae, full gating)", "cosine, random pair (the paper's baseline)", "0.21", "",
     "Table 3"),
    (_CAE, "CAE (cae, full gating)", "human 1:2 choice of the voice's face: generated face vs. "
     "a random same-gender face, 100 rounds", "72", "%", "Table 2; Sec. 4.3"),
    (_CAE, "humans, real faces", "human 1:2 voice-face mapping with two real faces, 20 "
     "people × 100 trials", "89", "%", "Table 2; Sec. 4.3"),
    (_REG, "regression (l1)", "recall@1 of the true VGG-Face feature from the predicted one, "
     "400-sample AVSpeech test gallery (about 8K training clips)", "0.51", "%", _R3),
    (_REG, "regression (l1)", "the same, recall@5", "1.77", "%", _R3),
    (_REG, "regression (l1)", "the same, recall@10", "3.03", "%", _R3),
    (_REG, "regression (l1)", "cosine of predicted and true normalised face feature, 400 test "
     "clips", "0.68", "", "Results on different losses table; Evaluation Metric table"),
    (_REG, "regression (l2)", "the same, L2 loss", "0.62", "", "Results on different losses table"),
    (_REG, "regression (l1_l2)", "the same, L1 + 10 L2 loss", "0.63", "",
     "Results on different losses table"),
    (_REG, "regression (infonce)", "the same, the report's contrastive loss", "0.49", "",
     "Results on different losses table"),
    (_DFG, "cGAN (cgan)", "\"accuracy\", ungrouped data (VoxCeleb/VGGFace, 924 training "
     "speakers); protocol, split and judge not stated", "96.88", "%",
     "Abstract; Conclusion (no table)"),
    (_DFG, "cGAN (cgan)", "\"accuracy\", grouped data; protocol not stated", "93.91", "%",
     "Abstract (no table)"),
    ("Wen, Xu, Jiang, Yang, He & Huang, \"Seeking the Shape of Sound\", CVPR 2021",
     "not implemented here (voice-face embedding)", "1:2 voice-face matching, VoxCeleb and "
     "VGGFace test speakers, any imposter", "87.2", "%",
     "no file here; as given in issue 25, not checked against the paper"),
    ("Wen, Xu, Jiang, Yang, He & Huang, \"Seeking the Shape of Sound\", CVPR 2021",
     "not implemented here (voice-face embedding)", "the same, same-gender imposter", "77.7", "%",
     "no file here; as given in issue 25, not checked against the paper"),
    ("Chen, Liu, Xu, Cheung & Li, \"Taking a Part for the Whole\", ACM MM 2023",
     "not implemented here (voice-face embedding)", "1:2 voice-face matching, VoxCeleb and "
     "VGGFace test speakers, any imposter", "87.87", "%",
     "no file here; as given in issue 25, not checked against the paper"),
    ("Chen, Liu, Xu, Cheung & Li, \"Taking a Part for the Whole\", ACM MM 2023",
     "not implemented here (voice-face embedding)", "the same, same-gender imposter", "78.90", "%",
     "no file here; as given in issue 25, not checked against the paper"),
]


def fmt_published(value: str, unit: str) -> str:
    """A paper's number as it printed it, with its unit: ``76.07 %``, ``0.32``."""
    return value + (f" {unit}" if unit else "")


def fraction(x: float, ceiling: float | None) -> float | None:
    """How far from chance (0.5) toward ``ceiling`` (the world's, or the instrument's bound)
    ``x`` is: 0 at chance, 1 at the ceiling."""
    if ceiling is None or ceiling <= 0.5:
        return None
    return (x - 0.5) / (ceiling - 0.5)


def cell_values(row: dict[str, float], ceiling: dict[str, float], matching_only: bool = False,
                bound: dict[str, float] | None = None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, _ in COLUMNS:
        if matching_only and key not in MATCHING:
            out[key] = None
        elif key.startswith(("fraction:", "bound:")):
            kind, base = key.split(":", 1)
            top = (ceiling if kind == "fraction" else bound or {}).get(base)
            out[key] = fraction(row[base], top) if base in row else None
        else:
            out[key] = row.get(key)
    return out


def fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else (f"{n / 1e3:.1f} K" if n >= 1e3 else str(n))


def row_label(r: RowResult) -> str:
    label = r.metrics.get("label") or r.entry.key
    own = r.evaluation is Evaluation.OWN_SPACE
    return f"{label}, {Evaluation.OWN_SPACE.value}" if own else label


def references(rows: list[RowResult]) -> list[tuple[str, str, dict[str, float], RowResult]]:
    """The reference rows, each from the first row whose metrics.json has it (every run's
    are the same: one judge, one test split, one seed); real faces and chance from a row
    evaluated by its generated faces, so their gender and identity columns are the judge's."""
    out = []
    judged = [r for r in rows if r.evaluation is not Evaluation.OWN_SPACE] or rows
    for name, label in REFERENCES:
        source = next((r for r in judged if name in r.metrics["rows"]), None)
        if source is not None:
            out.append((name, label, source.metrics["rows"][name], source))
    return out


def bound_of(instrument: dict[str, Any] | None) -> dict[str, float]:
    """The bound of the chance→bound columns: the instrument's ``instr.BOUND`` row, 1:2
    through the judge's embedding ({} without an instrument)."""
    if not instrument:
        return {}
    row = instrument["rows"][instr.BOUND]
    return {k: row[k] for k in ("match_1to2", "match_1to2_gender") if k in row}


def table_rows(rows: list[RowResult], bound: dict[str, float] | None = None
               ) -> list[tuple[str, list[str]]]:
    """(label, cells) per row of the main table, methods first, then the references;
    ``bound``: ``bound_of`` the instrument."""
    ceiling = next((r.metrics["rows"].get("ceiling", {}) for r in rows), {})
    out = []
    for r in rows:
        values = cell_values(r.metrics["rows"]["method"], ceiling,
                             r.evaluation is Evaluation.OWN_SPACE, bound)
        out.append((row_label(r), [fmt(values[k]) for k, _ in COLUMNS]
                    + [fmt_seconds(r.train_seconds), fmt_count(r.parameters)]))
    for name, label, row, _ in references(rows):
        values = cell_values(row, ceiling, bound=bound)
        out.append((label, [fmt(values[k]) for k, _ in COLUMNS] + ["—", "—"]))
    return out


def _md_table(header: list[str], rows: list[list[str]], align: str = "---:") -> list[str]:
    return (["| " + " | ".join(header) + " |",
             "|---|" + "|".join([align] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(cells) + " |" for cells in rows])


def results_markdown(rows: list[RowResult], context: dict[str, Any]) -> str:
    """docs/results.md: the table, how it was made, the runs, the papers' numbers, the
    figure. ``context``: ``command``, ``seconds`` (this invocation), ``figure`` (path
    relative to the file, or None), ``protocol`` (a ``Protocol``), ``started`` (optional),
    ``instrument`` (optional: an ``Instrument``, or a sentence saying why there is none)."""
    if not rows:
        raise UserError("no rows to write")
    p: Protocol = context["protocol"]
    first = rows[0].metrics
    counts = first["counts"]
    ceiling = first["rows"].get("ceiling")
    measured = context.get("instrument")
    instrument = measured if isinstance(measured, Instrument) else None
    bound = bound_of(instrument.result if instrument else None)
    trained = [r for r in rows if r.trained_now]
    total_train = sum(r.train_seconds for r in rows)
    total_eval = sum(float(r.metrics.get("seconds", 0)) for r in rows)
    lines = [
        "# Results: every method under one protocol", "",
        f"<!-- written by `{context['command']}`; regenerate rather than edit -->", "",
        f"Test split of `{p.data}`: {counts['test_utterances']} utterances of "
        f"{counts['test_identities']} identities against {counts['test_gallery_images']} "
        f"gallery images; known speakers: {counts['known_utterances']} utterances. Every row "
        f"is evaluated by `voice2face evaluate` with the judge `{p.judge}`, seed {p.seed} and "
        f"batch size {p.batch_size}: the same test trials and proposal faces for every method.",
        "",
    ]
    lines += _md_table(TABLE_HEADER, [[label, *cells] for label, cells
                                      in table_rows(rows, bound)])
    lines += [
        "",
        "- **1:2**: exhaustive 1:2 matching (the speaker's face against another test "
        "identity's), unstratified and with same-gender imposters (Wen et al. 2019, Table 3); "
        "**chance→ceiling**: (x − 0.5) / (ceiling − 0.5), 0 at chance and 1 at the world's "
        "Bayes ceiling"
        + (f" ({ceiling['match_1to2']:.3f} and {ceiling['match_1to2_gender']:.3f})"
           if ceiling and "match_1to2_gender" in ceiling else "")
        + "; real faces can pass 1 (face against face needs no voice).",
        "- **chance→bound**: (x − 0.5) / (bound − 0.5), of the way from chance to the bound "
        "a generator can reach"
        + (f": the voice-embedder oracle's 1:2 through the judge ({fmt(bound.get('match_1to2'))} "
           f"and {fmt(bound.get('match_1to2_gender'))}; [Instrument](#instrument-bounds-and-"
           "controls) below), what the mean face of the attributes that the generating rows' "
           "voice embedder reveals scores through this judge; — where the bound is not above "
           "chance. The o-oracle's distance from the ceiling is the judge's, the bound's "
           "further distance the voice embedder's." if bound else
           (f"; not measured: {measured}" if isinstance(measured, str) else "; not measured.")),
        "- **Fréchet (judge)**: Fréchet distance between the judge's features of the faces and "
        "of half the real test gallery; lower is better.",
        "- **R@K**: recall@K of the speaker among the test identities (one mean judge "
        "embedding each); **gender acc**: the judge's gender head on the faces; **known "
        "top-1/top-5**: the judge's identity head on faces made from held-out utterances of "
        "training speakers.",
        "- A row marked **own space** (`dimnet`) makes no faces: its voice embedding is "
        "matched against its own face embeddings, so only the matching columns apply (its "
        "own gender and identity heads' numbers are in its `metrics.json`), and not "
        "chance→bound, whose bound is of faces through the judge.",
        "- **training time**: wall time of the training run (`voice2face train`: data set-up, "
        "fit with its validations, final checkpoint), recorded in the run folder when it "
        "finished; the pretrained nets and the evaluation are not included. **trained "
        "parameters**: what the run optimises (`requires_grad`), critics and classifiers "
        "included, the frozen pretrained voice embedder, target network and decoder not; per "
        "net below.",
        "- The reference rows come from one run's `metrics.json` (every run measures the same "
        "ones); the proposal-faces row is what a CAE that ignored the voice would score.",
        "",
    ]
    if measured is not None:
        lines += instrument_markdown(measured)
    lines += ["## Runs", ""]
    run_rows = []
    for r in rows:
        nets = ", ".join(f"{k} {fmt_count(v)}" for k, v in r.record["parameters"]["by_net"].items())
        run_rows.append([r.entry.key, f"`{r.folder}`", str(r.record.get("max_steps", "—")),
                         fmt_seconds(r.train_seconds), nets or "—",
                         ("trained" if r.trained_now else "reused")
                         + (", evaluated" if r.evaluated_now else ", evaluation reused")])
    lines += _md_table(["row", "run folder", "steps", "training time", "trained parameters by net",
                        "this invocation"], run_rows, align="---")
    lines += ["", "Each row's numbers are its run's `results-eval/metrics.json`; the run's "
              "`results-run.json` holds its training time, parameters and the command that "
              "trained it.", "", "## Regenerate", "",
              "```bash", context.get("make_command") or context["command"], "```", "",
              f"This invocation took {fmt_seconds(context['seconds'])}"
              + (" from the start of `make` (data and pretrained nets it built included)"
                 if context.get("started") else "")
              + f", training {len(trained)} of {len(rows)} runs and reusing the others. From "
              f"scratch, the runs' recorded training times add up to {fmt_seconds(total_train)} "
              f"and their evaluations to {fmt_seconds(total_eval)}"
              + (f", the instrument to {fmt_seconds(float(instrument.result.get('seconds', 0)))}"
                 if instrument else "")
              + ", plus the synthetic world and the pretrained nets (`make data`, "
              "`DATA/pretrained/*.ckpt`).", ""]
    lines += ["## Published numbers (the papers' own, not comparable)", "",
              "What the papers report on real data (VoxCeleb voices, VGGFace or AVSpeech faces), "
              "with their own encoders, judges and splits. They are not comparable with the "
              "table above, which measures a synthetic world with its own judge; they say only "
              "what each method reached where it was published. Percentages are accuracies or "
              "recalls; bare numbers are cosines. \"where\" is the table or section of the "
              "paper. Deep Face Gen does not say what its accuracies measure. The "
              "Speech2Face-style report (Turk. J. Comput. Math. Educ., 2021) gives no numbers. "
              "The rows of methods not implemented here, the strongest published voice-face "
              "matchers (no paper file here), are context: about what 1:2 matching reaches on "
              "real data.", ""]
    lines += _md_table(["paper", "method here", "measure", "reported", "where"],
                       [[paper, method, what, fmt_published(v, unit), where]
                        for paper, method, what, v, unit, where in PUBLISHED], align="---")
    if context.get("figure"):
        lines += ["", "## Faces", "",
                  "One test speaker per row: a real face of the speaker, the proposal face the "
                  "CAE rows morph (a real face of the next row's speaker), then each method's "
                  "face from the same utterance.", "",
                  f"![one test speaker per row: real face, proposal, each method's face]"
                  f"({context['figure']})"]
    return "\n".join(lines) + "\n"


# --- the figure ------------------------------------------------------------------------------

def figure(rows: list[RowResult], protocol: Protocol, n_identities: int = 6):
    """One test speaker per row (``n_identities``, drawn by the seed as evaluation draws its
    grid): a real face, the proposal face, then each face-generating row's face from the
    speaker's first test utterance, through the method contract."""
    makers = [r for r in rows if r.evaluation is Evaluation.GENERATED_FACES]
    if not makers:
        return None
    dm = VoiceFaceDataModule(protocol.data, eval_batch_size=protocol.batch_size, num_workers=0,
                             spectrogram=True)
    names = {i["index"]: i["name"] for i in dm.identities}
    chosen = chosen_identities([i["index"] for i in dm.identities if i["split"] == "test"],
                               n_identities, protocol.seed)
    first: dict[int, tuple[Voices, torch.Tensor]] = {}
    for batch in dm.eval_dataloader("test", rank=0, world_size=1):
        for i, identity in enumerate(batch["identity"].tolist()):
            if identity in chosen and identity not in first:
                n = int(batch["mel_lengths"][i])
                spec = batch.get("spec")
                first[identity] = (Voices(batch["mel"][i:i + 1, :, :n], batch["mel_lengths"][i:i + 1],
                                          None if spec is None else spec[i:i + 1, :, :n]),
                                   batch["face"][i])
        if len(first) == len(chosen):
            break
    ids = [i for i in chosen if i in first]
    real = torch.stack([first[i][1] for i in ids])
    proposal = proposal_faces(real, torch.tensor(ids)) if len(ids) > 1 else None
    columns: list[list[torch.Tensor | None]] = [list(real)]
    titles = ["real face"]
    if proposal is not None and any(r.entry.cls.needs_proposal for r in makers):
        columns.append(list(proposal))
        titles.append("proposal (CAE input)")
    for r in makers:
        module = load_method(r.folder / "checkpoints" / "final.ckpt").to(protocol.device)
        module.check_ready()
        faces = []
        torch.manual_seed(protocol.seed)  # a method that draws noise draws the same
        with torch.no_grad():
            for k, i in enumerate(ids):
                p = None
                if module.needs_proposal:
                    if proposal is None:
                        break
                    p = proposal[k:k + 1].to(protocol.device)
                faces.append(module.generate_faces(first[i][0].to(protocol.device), p)[0].cpu())
        columns.append(faces + [None] * (len(ids) - len(faces)))
        titles.append(row_label(r))
        del module
    return column_grid(titles, [(names.get(i, str(i)), [c[k] for c in columns])
                                for k, i in enumerate(ids)])


# --- the command -----------------------------------------------------------------------------

def train_overrides(entry: Entry, data: Path, overrides: list[str]) -> list[str]:
    """What ``entry`` trains with: the data, the user's overrides, then the variant's (so
    that it holds); the evaluation after training is this command's."""
    return [f"data.root={data}", *overrides, *entry.overrides, "run.evaluate=false"]


def configure(entry: Entry, data: Path, overrides: list[str]) -> tuple[DictConfig, dict, str]:
    """The config ``entry`` trains with, its identity, and the equivalent command line; the
    run folder is named after the identity, and an unfinished one is resumed."""
    extra = train_overrides(entry, data, overrides)
    cfg = load_config(entry.method, extra)
    identity = run_identity(cfg, sha1_file(data / "manifest.json"))
    cfg.run.name = f"results-{entry.key}-{data.name}-{digest(identity)}"
    cfg.run.resume = "auto"
    command = shlex.join(["voice2face", "train", entry.method, *extra,
                          f"run.name={cfg.run.name}", "run.resume=auto"])
    return cfg, identity, command


def check_pretrained(cfgs: list[DictConfig], judge: Path) -> None:
    """Every pretrained net a run or the evaluation loads exists (the Makefile makes them)."""
    missing = sorted({p for cfg in cfgs for p in string_leaves(OmegaConf.to_container(cfg.model))
                      if p.endswith(".ckpt") and not Path(p).is_file()} |
                     ({str(judge)} if not judge.is_file() else set()))
    if missing:
        raise UserError(f"missing pretrained net(s): {', '.join(missing)}; `make results "
                        f"DATA=...` builds them (PRETRAIN_ARGS='key=value ...' for their runs)")


def run(args, argv: list[str]) -> int:
    _PROGRESS.update(done=[], now=None)

    started = time.time()
    data = Path(args.data)
    if not (data / "manifest.json").is_file():
        raise UserError(f"--data {data}: no manifest.json; make a synthetic world with `make "
                        f"data DATA={data}` or `voice2face synth --out {data}`")
    chosen = select(entries(), args.only)
    retrain = {e.key for e in select(chosen, args.retrain, "--retrain")} if args.retrain else set()
    overrides = list(args.overrides)
    manifest_sha1 = sha1_file(data / "manifest.json")
    info = data_info(VoiceFaceDataModule(data, num_workers=0))
    judge = Path(args.judge) if args.judge else default_judge(data)
    configured = [configure(e, data, overrides) for e in chosen]
    check_pretrained([cfg for cfg, _, _ in configured], judge)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    protocol = Protocol(data, judge, seed=args.seed, batch_size=args.batch_size,
                        workers=args.workers, device=device, manifest_sha1=manifest_sha1,
                        judge_sha1=sha1_file(judge))

    rows = []
    for entry, (cfg, identity, command) in zip(chosen, configured):
        _PROGRESS["now"] = f"training {entry.key} in {Path(cfg.run.root) / cfg.run.name}"
        folder, record, trained_now = ensure_run(entry, cfg, identity, info["fingerprint"],
                                                 command, retrain=entry.key in retrain)
        _PROGRESS["now"] = f"evaluating {entry.key} ({folder} is finished and kept)"
        metrics_path, metrics, evaluated_now = ensure_evaluation(entry, folder, protocol)
        _PROGRESS["done"].append(entry.key)
        rows.append(RowResult(entry, folder, metrics, metrics_path, record, trained_now,
                              evaluated_now))

    out = Path(args.out)
    _PROGRESS["now"] = "measuring the instrument (every row is finished and kept)"
    measured = table_instrument(protocol, instrument_voice(chosen, configured, data, overrides),
                                instrument_cache(configured[0][0].run.root, data))
    _PROGRESS["now"] = None
    figure_path = Path(args.figure) if args.figure else out.parent / "images" / "results-grid.png"
    image = figure(rows, protocol, args.figure_identities)
    if image is not None:
        save_png(image, figure_path)
        print(f"voice2face results: wrote {figure_path}")
    since = args.started if args.started else started
    context = {"protocol": protocol, "command": shlex.join(["voice2face", "results", *argv]),
               "make_command": make_command(args, overrides) if args.started else None,
               "seconds": time.time() - since, "started": args.started,
               "figure": os.path.relpath(figure_path, out.parent) if image is not None else None,
               "instrument": measured}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(results_markdown(rows, context))
    os.replace(tmp, out)
    if args.readme:
        write_readme_table(Path(args.readme), methods_table(rows, str(configured[0][0].profile)))
        print(f"voice2face results: wrote the methods table of {args.readme}")
    print(f"voice2face results: wrote {out} ({len(rows)} rows; "
          f"{sum(r.trained_now for r in rows)} trained, {sum(not r.trained_now for r in rows)} "
          f"reused) in {fmt_seconds(time.time() - started)}")
    return 0


# The README's table of methods, written by this command between these lines (``--readme``)
README_BEGIN = "<!-- methods: written by `make results` (voice2face results --readme) -->"
README_END = "<!-- end of methods -->"


def methods_table(rows: list[RowResult], profile: str) -> str:
    """Every registered method: what it is (its spec), what it needs before it trains under
    ``profile`` and its test 1:2 / same-gender 1:2 from ``rows`` (its default variant's row)."""
    from voice2face.config import load_config
    from voice2face.methods import pretrained_needs

    by_key = {r.entry.key: r for r in rows}
    real = next((r.metrics["rows"]["real_faces"] for r in rows), None)
    lines = ["| method | what it is | needs | test 1:2 / same gender |", "|---|---|---|---:|"]
    for name, spec in SPECS.items():
        key = name
        for option in spec.variants:  # the row of the variant its config trains by default
            key = f"{name}-{OmegaConf.select(load_config(name, [f'profile={profile}']), option)}"
        row = by_key.get(key)
        if name == "face":
            number = ("the judge" if real is None else
                      f"the judge; real faces {fmt(real['match_1to2'])} / "
                      f"{fmt(real['match_1to2_gender'])}")
        elif not spec.evaluable:
            number = "(pretraining)"
        elif row is None:
            number = "(not in this table)"
        else:
            m = row.metrics["rows"]["method"]
            own = " (own space)" if row.evaluation is Evaluation.OWN_SPACE else ""
            number = f"{fmt(m['match_1to2'])} / {fmt(m['match_1to2_gender'])}{own}"
        needs = ", ".join(f"`{n}.ckpt`" for n in pretrained_needs(name, profile)) or "data"
        lines.append(f"| `{name}` | {spec.about} | {needs} | {number} |")
    return "\n".join(lines) + "\n"


def write_readme_table(path: Path, table: str) -> None:
    """Replace the block between ``README_BEGIN`` and ``README_END`` of ``path``."""
    text = path.read_text()
    head, begin, rest = text.partition(README_BEGIN)
    _, end, tail = rest.partition(README_END)
    if not begin or not end:
        raise UserError(f"--readme {path}: no block between the lines {README_BEGIN!r} and "
                        f"{README_END!r} to write the methods table into")
    write_bytes(path, (head + begin + "\n" + table + end + tail).encode())


def make_command(args, overrides: list[str]) -> str:
    """The ``make results`` line that regenerates the file (``make results`` passes
    ``--started``, and ``--pretrain-args``: its PRETRAIN_ARGS)."""
    words = ["make", "results", f"DATA={args.data}"]
    if args.out != "docs/results.md":
        words.append(f"RESULTS={args.out}")
    if overrides:
        words.append(f"ARGS={' '.join(overrides)}")
    if (args.pretrain_args or "").strip():
        words.append(f"PRETRAIN_ARGS={args.pretrain_args.strip()}")
    return shlex.join(words)


# what an interrupt says was kept: the rows finished and the one in hand
_PROGRESS: dict[str, Any] = {"done": [], "now": None}


def _interrupted() -> str:
    done = ", ".join(_PROGRESS["done"]) or "none"
    now = f"; interrupted while {_PROGRESS['now']}" if _PROGRESS["now"] else ""
    return (f"interrupted{now}; rows finished: {done}. Every finished training and evaluation "
            f"is kept and a training in progress resumes from its last checkpoint: run the same "
            f"command again")


@reports_errors("voice2face results", interrupted=_interrupted)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice2face results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides for every row's run (e.g. trainer.max_steps=5)")
    parser.add_argument("--data", default="data/synth-default", help="dataset folder")
    parser.add_argument("--out", default="docs/results.md", help="the Markdown file to write")
    parser.add_argument("--readme", help="also write the methods table of this README (the "
                        "block between its methods markers)")
    parser.add_argument("--figure", help="the figure's PNG (default: OUT's folder/images/"
                        "results-grid.png)")
    parser.add_argument("--figure-identities", type=int, default=6,
                        help="test speakers (rows) in the figure")
    parser.add_argument("--only", help="comma-separated rows to run and show (default: all): "
                        + ", ".join(e.key for e in entries()))
    parser.add_argument("--retrain", help="comma-separated rows to train again although a "
                        "finished run of their settings exists (after a change to their code, "
                        "which the reuse rule does not see); the old folder is kept beside")
    parser.add_argument("--judge", help=f"face checkpoint (default: "
                        f"{default_judge('DATA').as_posix()})")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed, every row")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    parser.add_argument("--workers", type=int, default=0, help="evaluation DataLoader workers")
    parser.add_argument("--device", default="auto", help="evaluation device: cpu, cuda or auto")
    parser.add_argument("--started", type=float, help="epoch seconds the whole run started "
                        "(make results passes when make started, before data and pretraining)")
    parser.add_argument("--pretrain-args", help="the PRETRAIN_ARGS of `make results`, to print "
                        "with the command that regenerates the file")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_intermixed_args(argv)
    return run(args, [a for a in argv])


if __name__ == "__main__":
    sys.exit(main())
