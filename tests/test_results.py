"""``voice2face results`` / ``make results``: every method and variant in one table, the
numbers from each run's metrics.json, finished runs reused and changed configs retrained.

The fast tests check the rows, the table writer (on fake metrics.json files) and the
finished-run rule; the slow one runs ``make results`` on a tiny synthetic world."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fake_data import write_fake_dataset
from voice2face.config import load_config
from voice2face.constants import default_judge
from voice2face.methods import METHODS, SPECS, Evaluation
from voice2face.methods.base import CHECKPOINT_FORMAT
from voice2face.results import (COLUMNS, EVAL, MATCHING, PUBLISHED, RECORD, REFERENCES,
                                TABLE_HEADER, Entry, Protocol, RowResult, bound_of, digest,
                                entries, finished, instrument_cache, main, results_markdown,
                                row_label, run_identity)

REPO = Path(__file__).resolve().parent.parent


# --- reading the written table back ------------------------------------------------------------

def md_table(text: str, first_header: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header, {first cell: the other cells}) of the Markdown table whose header starts with
    ``| first_header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    split = lambda line: [c.strip() for c in line.strip().strip("|").split(" | ")]  # noqa: E731
    body = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = split(line)
        body[cells[0]] = cells[1:]
    return split(lines[start]), body


def expected_cells(row: dict, ceiling: dict, matching_only: bool, bound: dict | None = None
                   ) -> list[float | None]:
    """A row's cells by the columns' definitions: ``fraction:`` toward the ceiling, ``bound:``
    toward the instrument's ``bound`` (none without one)."""
    out = []
    for key, _ in COLUMNS:
        top = ceiling if key.startswith("fraction:") else bound or {}
        if matching_only and key not in MATCHING:
            out.append(None)
        elif key.startswith(("fraction:", "bound:")):
            base = key.split(":", 1)[1]
            out.append((row[base] - 0.5) / (top[base] - 0.5)
                       if base in row and top.get(base, 0.5) > 0.5 else None)
        else:
            out.append(row.get(key))
    return out


def own_space(method: str) -> bool:
    return METHODS[method].evaluation is Evaluation.OWN_SPACE


def check_cells(cells: list[str], expected: list[float | None], what: str) -> None:
    for (key, _), cell, value in zip(COLUMNS, cells, expected):
        if value is None:
            assert cell == "—", (what, key, cell)
        else:
            assert math.isclose(float(cell), value, abs_tol=5.1e-4), (what, key, cell, value)


def check_table(text: str, rows: list[RowResult], bound: dict | None = None) -> None:
    """Every row and column is there, and every number is its metrics.json's (read from the
    file), rounded to three decimals; ``bound``: the instrument's (``bound_of``), if any."""
    header, body = md_table(text, "method")
    assert header == TABLE_HEADER
    saved = {r.entry.key: json.loads(r.metrics_path.read_text()) for r in rows}
    ceiling = next(iter(saved.values()))["rows"].get("ceiling", {})
    for r in rows:
        label = row_label(r)
        assert label in body, (label, list(body))
        cells = body[label]
        check_cells(cells[:len(COLUMNS)], expected_cells(saved[r.entry.key]["rows"]["method"],
                                                          ceiling, own_space(r.entry.method),
                                                          bound),
                    label)
        assert cells[len(COLUMNS):] != ["—", "—"]  # training time and parameters
    # the reference rows: from the first row evaluated by its faces that has each
    judged = [r for r in rows if not own_space(r.entry.method)]
    for name, label in REFERENCES:
        source = next((r for r in judged if name in saved[r.entry.key]["rows"]), None)
        if source is None:
            assert label not in body
            continue
        check_cells(body[label][:len(COLUMNS)],
                    expected_cells(saved[source.entry.key]["rows"][name], ceiling, False, bound),
                    label)
    assert len(body) == len(rows) + sum(1 for n, _ in REFERENCES
                                        if any(n in saved[r.entry.key]["rows"] for r in judged))


# --- fast: the rows, the table writer, the finished-run rule -----------------------------------

def test_a_row_for_every_variant_of_every_evaluated_method_in_the_registrys_order():
    rows = entries()
    assert len({e.key for e in rows}) == len(rows)
    # the methods evaluation measures, none other, each method's rows together in SPECS' order
    measured = {n for n, c in METHODS.items() if c.evaluation is not Evaluation.PRETRAINING}
    assert {e.method for e in rows} == measured
    at = [list(SPECS).index(e.method) for e in rows]
    assert at == sorted(at)
    for name in measured:
        mine = [e for e in rows if e.method == name]
        variants = SPECS[name].variants
        if not variants:
            assert [(e.key, e.overrides) for e in mine] == [(name, ())]
        assert len(mine) == max(1, sum(len(values) for values in variants.values()))
        for key, values in variants.items():
            # one row per value, whose config has it even when the user's override says
            # another: the variant's override comes after the user's
            made = []
            for e in mine:
                if any(o.startswith(f"{key}=") for o in e.overrides):
                    other = next((v for v in values if f"{key}={v}" not in e.overrides), values[0])
                    cfg = load_config(name, [f"{key}={other}", *e.overrides])
                    made.append(str(OmegaConf.select(cfg, key)))
            assert sorted(made) == sorted(map(str, values))


def fake_metrics(entry: Entry, rng: random.Random) -> dict:
    cls = METHODS[entry.method]
    keys = ["match_1to2", "match_1to2_gender", "recall@1", "recall@5", "recall@10",
            "recall@20", "gender_acc", "cosine", "identity_top1", "identity_top5"]
    rows = {"method": {k: rng.random() for k in keys}}
    if cls.evaluation is not Evaluation.OWN_SPACE:
        rows["method"]["frechet"] = 3 * rng.random()
    if cls.needs_proposal:
        rows["proposal_faces"] = {k: rng.random() for k in keys}
    rows["real_faces"] = {**{k: rng.random() for k in keys}, "frechet": rng.random()}
    rows["chance"] = {"match_1to2": 0.5, "match_1to2_gender": 0.5, "recall@1": 0.1}
    rows["ceiling"] = {"match_1to2": 0.87, "match_1to2_gender": 0.78}
    return {"label": f"{entry.method} ({entry.key})", "rows": rows, "seconds": 2.0,
            "counts": {"test_utterances": 24, "test_identities": 6, "test_gallery_images": 18,
                       "known_utterances": 60}}


def fake_rows(tmp_path: Path) -> list[RowResult]:
    rng, rows = random.Random(0), []
    for e in entries():
        folder = tmp_path / "runs" / f"results-{e.key}"
        (folder / EVAL).mkdir(parents=True)
        path = folder / EVAL / "metrics.json"
        path.write_text(json.dumps(fake_metrics(e, rng)))
        record = {"train_seconds": 100 * rng.random(), "max_steps": 3,
                  "parameters": {"trained": 123456, "by_net": {"net": 123456}}}
        rows.append(RowResult(e, folder, json.loads(path.read_text()), path, record))
    return rows


def test_the_table_shows_every_row_and_column_from_the_metrics_json(tmp_path):
    rows = fake_rows(tmp_path)
    protocol = Protocol(tmp_path / "world", tmp_path / "world" / "pretrained" / "face.ckpt")
    text = results_markdown(rows, {"protocol": protocol, "command": "voice2face results",
                                   "seconds": 75.0, "figure": "images/results-grid.png"})
    check_table(text, rows)
    _, body = md_table(text, "method")
    dimnet = body["dimnet (dimnet), own space"]
    assert dimnet[[k for k, _ in COLUMNS].index("frechet")] == "—"  # matching only
    assert body["gan (gan)"][-1] == "123.5 K"
    # every row's run, and the papers' numbers in a table of their own
    _, runs = md_table(text, "row")
    assert set(runs) == {e.key for e in entries()}
    header, published = md_table(text, "paper")
    assert header == ["paper", "method here", "measure", "reported", "where"] and published
    assert "not comparable" in text and "![" in text and "voice2face results" in text


def test_the_readme_methods_table_is_written_from_the_rows_between_its_markers(tmp_path):
    from voice2face.methods import SPECS, pretrained_needs
    from voice2face.errors import UserError
    from voice2face.results import README_BEGIN, README_END, methods_table, write_readme_table
    rows = fake_rows(tmp_path)
    by_key = {r.entry.key: r.metrics["rows"] for r in rows}
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    write_readme_table(readme, methods_table(rows, "cpu"))
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    _, body = md_table(text, "method")
    assert set(body) == {f"`{name}`" for name in SPECS}
    cell = {name[1:-1]: cells[-1] for name, cells in body.items()}
    # each method's number is its default variant's row: the config's gating / loss
    for name, key in (("gan", "gan"), ("cae", "cae-full"),
                      ("regression", "regression-l2")):  # the cpu profile's loss
        m = by_key[key]["method"]
        assert cell[name] == f"{m['match_1to2']:.3f} / {m['match_1to2_gender']:.3f}"
    assert cell["dimnet"].endswith("(own space)") and cell["voice"] == "(pretraining)"
    assert f"{by_key['gan']['real_faces']['match_1to2']:.3f}" in cell["face"]
    assert body["`gan`"][1] == ", ".join(f"`{n}.ckpt`" for n in pretrained_needs("gan", "cpu"))
    # a README without the markers is refused, unchanged
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="no block between"):
        write_readme_table(readme, "table")
    assert readme.read_text() == "no markers\n"


def test_the_published_numbers_are_filled_in_with_their_sources(tmp_path):
    """Every row of the papers' table has a number and the table or section it comes from
    (none left as "—"); Wen, Singh & Raj's 1:2 numbers are their Table 3's; the written
    Markdown shows every row."""
    for paper, method, what, value, unit, where in PUBLISHED:
        row = (paper, method, what, value, unit, where)
        assert all(isinstance(c, str) and c.strip() and c.strip() != "—"
                   for c in (paper, method, what, value, where)), row
        assert math.isfinite(float(value)) and unit in ("%", ""), row
        assert 0 <= float(value) <= (100 if unit == "%" else 1), row
    wen = {(what, float(v)): where for paper, _, what, v, _, where in PUBLISHED
           if paper == "Wen, Singh & Raj, NeurIPS 2019"}
    table3 = sorted(v for (_, v), where in wen.items() if where.startswith("Table 3"))
    assert table3 == [59.69, 76.07, 93.98, 96.83]
    assert {61.7, 82.3, 96.45} <= {v for _, v in wen}
    cae = {float(v) for paper, _, what, v, *_ in PUBLISHED if "(CAE)" in paper
           and "top 5 of a 500-image gallery" in what}
    assert cae == {21.0}

    rows = fake_rows(tmp_path)
    protocol = Protocol(tmp_path / "world", tmp_path / "world" / "pretrained" / "face.ckpt")
    text = results_markdown(rows, {"protocol": protocol, "command": "voice2face results",
                                   "seconds": 1.0, "figure": None})
    section = text[text.index("## Published numbers"):]
    assert "not comparable" in section
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| paper |"))
    body = lines[start + 2:start + 2 + len(PUBLISHED)]
    assert len(body) == len(PUBLISHED) and all(line.startswith("| ") for line in body)
    for line, (paper, method, what, value, unit, where) in zip(body, PUBLISHED):
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert cells == [paper, method, what, f"{value} {unit}".strip(), where], cells
    assert "| 76.07 % | Table 3; Sec. 4.2 |" in section
    assert "| 59.69 % | Table 3 |" in section
    assert not any("| — |" in line for line in body)


def test_the_judge_and_the_pretrained_nets_are_checked_before_any_training(tmp_path, capsys):
    """Without ``--judge`` the data's own judge is checked; a missing net is named with the
    command that makes it: each that the registry says the row needs."""
    from voice2face.methods import pretrained_needs

    world = tmp_path / "world"
    write_fake_dataset(world)
    runs = tmp_path / "runs"
    assert main(["--data", str(world), "--only", "gan", "profile=cpu", f"run.root={runs}"]) != 0
    err = capsys.readouterr().err
    assert "make results" in err
    for stem in pretrained_needs("gan", "cpu"):
        assert str(world / "pretrained" / f"{stem}.ckpt") in err, (stem, err)
    assert str(default_judge(world)) in err
    judge = tmp_path / "judge.ckpt"
    assert main(["--data", str(world), "--only", "gan", "--judge", str(judge), "profile=cpu",
                 f"run.root={runs}"]) != 0
    err = capsys.readouterr().err
    assert str(judge) in err and str(default_judge(world)) not in err
    assert not runs.exists()  # nothing trained


def fake_checkpoint(path: Path, method: str, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"voice2face": {"method": method, "format": CHECKPOINT_FORMAT,
                               "data": {"fingerprint": fingerprint}}}, path)


def test_a_run_is_finished_when_config_record_and_final_checkpoint_agree(tmp_path):
    from omegaconf import OmegaConf
    data = tmp_path / "world"
    (data / "pretrained").mkdir(parents=True)
    (data / "pretrained" / "voice.ckpt").write_bytes(b"voice v1")
    cfg = load_config("gan", [f"data.root={data}", "trainer.max_steps=3"])
    identity = run_identity(cfg, "manifest-sha")
    folder = tmp_path / "runs" / "r"
    assert finished(folder, identity, "gan", "fp") == (False, "no run folder")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(load_config(
        "gan", [f"data.root={data}", "trainer.max_steps=4"])))
    assert finished(folder, identity, "gan", "fp")[1] == "its config.yaml differs"
    # where the run is kept and how it logs are not part of what it learns
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(load_config(
        "gan", [f"data.root={data}", "trainer.max_steps=3", "run.name=r", "logger.wandb=false"])))
    assert "did not finish" in finished(folder, identity, "gan", "fp")[1]
    (folder / RECORD).write_text(json.dumps({"identity": {**identity, "manifest_sha1": "other"}}))
    assert "other data" in finished(folder, identity, "gan", "fp")[1]
    (folder / RECORD).write_text(json.dumps({"identity": identity}))
    assert "does not exist" in finished(folder, identity, "gan", "fp")[1]
    fake_checkpoint(folder / "checkpoints" / "final.ckpt", "cgan", "fp")
    assert "another method" in finished(folder, identity, "gan", "fp")[1]
    fake_checkpoint(folder / "checkpoints" / "final.ckpt", "gan", "other fingerprint")
    assert "another method or data" in finished(folder, identity, "gan", "fp")[1]
    fake_checkpoint(folder / "checkpoints" / "final.ckpt", "gan", "fp")
    assert finished(folder, identity, "gan", "fp") == (True, "finished")


def test_a_row_reuses_the_makefiles_pretraining_run_of_the_same_settings(tmp_path, monkeypatch):
    """The dimnet row and the pretrained dimnet.ckpt: when a finished
    ``pretrain-dimnet-<data>`` run has the row's config and data, the row is that run (not
    trained again), its record written there; another config, an unfinished run, or a run
    older than the data is not reused."""
    import voice2face.results as results
    from voice2face.results import ensure_run
    data = tmp_path / "world"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    runs = tmp_path / "runs"
    cfg = load_config("dimnet", [f"data.root={data}", f"run.root={runs}", "trainer.max_steps=3"])
    identity = run_identity(cfg, "manifest-sha")
    cfg.run.name = f"results-dimnet-world-{digest(identity)}"
    twin = runs / "pretrain-dimnet-world"
    twin.mkdir(parents=True)

    class Fake(torch.nn.Module):
        label = "dimnet"

        def __init__(self):
            super().__init__()
            self.voice = torch.nn.Linear(2, 3)

    trained = []
    monkeypatch.setattr(results, "train", lambda c: trained.append(c) or 1 / 0)
    monkeypatch.setattr(results, "load_method", lambda path, expect: Fake())
    monkeypatch.setattr(results, "training_seconds", lambda path: 12.34)

    def attempt():
        return ensure_run(Entry("dimnet", "dimnet"), cfg, identity, "fp", "cmd", log=lambda m: None)

    def write_config(*overrides):
        (twin / "config.yaml").write_text(OmegaConf.to_yaml(load_config(
            "dimnet", [f"data.root={data}", "trainer.max_steps=3", "run.name=pretrain-dimnet-world",
                       *overrides])))

    write_config("trainer.max_steps=4")  # other settings
    fake_checkpoint(twin / "checkpoints" / "final.ckpt", "dimnet", "fp")
    with pytest.raises(ZeroDivisionError):
        attempt()
    assert len(trained) == 1 and not (twin / RECORD).exists()
    write_config()
    os.utime(twin / "checkpoints" / "final.ckpt", (1, 1))  # older than the data
    with pytest.raises(ZeroDivisionError):
        attempt()
    assert len(trained) == 2
    fake_checkpoint(twin / "checkpoints" / "final.ckpt", "dimnet", "fp")
    folder, record, trained_now = attempt()
    assert (folder, trained_now, len(trained)) == (twin, False, 2)
    assert record["train_seconds"] == 12.3 and record["pretraining_run"]  # 0.1 s, as a row's
    assert record["parameters"] == {"trained": 9, "by_net": {"voice": 9}}
    assert json.loads((twin / RECORD).read_text()) == record
    assert finished(twin, identity, "dimnet", "fp") == (True, "finished")
    # the next invocation finds the record; another method's row never takes the run
    assert attempt()[:2] == (twin, record)
    assert results.pretraining_twin(cfg, identity, "gan", "fp") is None


def test_the_run_identity_follows_config_data_and_pretrained_nets(tmp_path):
    data = tmp_path / "world"
    (data / "pretrained").mkdir(parents=True)
    voice = Path(load_config("gan", [f"data.root={data}"]).model.voice)  # the profile's embedder
    voice.write_bytes(b"voice v1")
    same = lambda *o: digest(run_identity(load_config("gan", [f"data.root={data}", *o]), "m"))  # noqa: E731
    base = same()
    assert same("run.name=x", "logger.wandb=false", "run.checkpoint_every=7") == base
    assert same("trainer.max_steps=3") != base
    assert digest(run_identity(load_config("gan", [f"data.root={data}"]), "m2")) != base
    voice.write_bytes(b"voice v2")
    os.utime(voice, ns=(1, 1))  # another version of the pretrained voice embedder
    assert same() != base


# --- the instrument: kept, and shown as bounds and as chance→bound columns ----------------------

def fake_instrument(rng: random.Random) -> dict:
    """An instrument result (``evaluation.instrument.instrument``'s shape) with three-decimal
    numbers, the bound above chance."""
    from voice2face.evaluation.instrument import COLUMNS as ICOLUMNS, ROWS
    rows = {key: {k: round(rng.uniform(0.3, 0.95), 3) for k, _, _ in ICOLUMNS} for key in ROWS}
    rows["voice_oracle"].update(match_1to2=0.676, match_1to2_gender=0.572)
    rows["chance"].update(match_1to2=0.5, match_1to2_gender=0.5)
    return {"rows": rows, "readout_r2": {"readout_r2_gender": 0.6, "readout_r2_age": 0.5,
                                         "readout_r2_size": 0.2},
            "voice_r2": {"gender": 0.9, "age": 0.3, "size": 0.7}, "sigma": [0.64, 0.9, 1.17],
            "sigma_voice": [0.7, 1.5, 1.3], "counts": {}, "seconds": 12.0}


def test_chance_to_bound_is_computed_from_the_tables_own_numbers(tmp_path):
    """Beside each chance→ceiling column, chance→bound: (value − chance) / (bound − chance),
    the bound being the Instrument table's voice-embedder oracle on that protocol (judge),
    chance the main table's chance row; every number read back from the written Markdown."""
    from voice2face.evaluation.instrument import COLUMNS as ICOLUMNS, ROWS
    from voice2face.results import Instrument
    rng = random.Random(1)
    rows = fake_rows(tmp_path)
    for r in rows:  # three decimals, so that the table's rounded numbers are the exact ones
        for row in r.metrics["rows"].values():
            row.update({k: round(v, 3) for k, v in row.items()})
        r.metrics_path.write_text(json.dumps(r.metrics))
    measured = Instrument(fake_instrument(rng), tmp_path / "voice.ckpt",
                          tmp_path / "results-instrument.json", measured_now=True)
    protocol = Protocol(tmp_path / "world", tmp_path / "world" / "pretrained" / "face.ckpt")
    text = results_markdown(rows, {"protocol": protocol, "command": "voice2face results",
                                   "seconds": 1.0, "figure": None, "instrument": measured})
    header, body = md_table(text, "method")
    at = {h: header.index(h) - 1 for h in header}  # cells come without the first column
    # each chance→bound column right after its chance→ceiling column
    for protocol_name in ("1:2", "same gender"):
        assert header[header.index(f"{protocol_name}, chance→ceiling") + 1] == \
            f"{protocol_name}, chance→bound"
    iheader, instrument = md_table(text, "probe")
    assert iheader == ["probe"] + [h for _, _, h in ICOLUMNS]
    assert set(instrument) == set(ROWS.values())
    oracle = instrument[ROWS["voice_oracle"]]
    bound = {"1:2": float(oracle[0]), "1:2 same gender": float(oracle[1])}
    assert bound == {"1:2": 0.676, "1:2 same gender": 0.572}
    chance = body["chance"]
    checked = 0
    for label, cells in body.items():
        for value_header, column in (("1:2", "1:2, chance→bound"),
                                     ("1:2 same gender", "same gender, chance→bound")):
            cell = cells[at[column]]
            if label.endswith(", own space"):  # the bound is of faces through the judge
                assert cell == "—", label
                continue
            value, zero = float(cells[at[value_header]]), float(chance[at[value_header]])
            want = (value - zero) / (bound[value_header] - zero)
            assert float(cell) == pytest.approx(want, abs=5.1e-4), (label, column, cell, want)
            checked += 1
    assert checked == 2 * (len(body) - 1)
    assert "0.676 and 0.572" in text and "## Instrument: bounds and controls" in text
    # and every other column as before
    check_table(text, rows, {"match_1to2": 0.676, "match_1to2_gender": 0.572})


def test_without_an_instrument_the_bound_columns_are_empty_and_say_why(tmp_path):
    rows = fake_rows(tmp_path)
    protocol = Protocol(tmp_path / "world", tmp_path / "world" / "pretrained" / "face.ckpt")
    why = "the instrument reads the attributes a synthetic world hides; this data has none"
    text = results_markdown(rows, {"protocol": protocol, "command": "voice2face results",
                                   "seconds": 1.0, "figure": None, "instrument": why})
    check_table(text, rows)  # no bound: every chance→bound cell "—"
    assert f"No instrument: {why}." in text and "| probe |" not in text


def write_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """A manifest, a judge and a voice embedder as files (their bytes are what is keyed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("manifest.json", b"{}"), ("face.ckpt", b"judge v1"),
                          ("voice.ckpt", b"voice v1")):
        (folder / name).write_bytes(content)
    return folder / "manifest.json", folder / "face.ckpt", folder / "voice.ckpt"


def test_the_instrument_is_kept_and_measured_again_when_its_inputs_change(tmp_path, monkeypatch):
    import voice2face.results as results
    from voice2face.results import ensure_instrument, instrument_cache, sha1_file

    calls = []

    def measure(data, judge, voice, **options):
        calls.append((Path(judge).read_bytes(), Path(voice).read_bytes()))
        return {"rows": {"voice_oracle": {"match_1to2": 0.6 + 0.01 * len(calls)}},
                "seconds": 1.0}
    monkeypatch.setattr(results.instr, "measure", measure)
    manifest, judge, voice = write_inputs(tmp_path / "world")
    cache = instrument_cache(tmp_path / "runs", tmp_path / "world")

    def protocol(judge_path: Path) -> Protocol:
        return Protocol(tmp_path / "world", judge_path, manifest_sha1=sha1_file(manifest),
                        judge_sha1=sha1_file(judge_path))

    first = ensure_instrument(protocol(judge), voice, cache, log=lambda *a: None)
    assert first.measured_now and len(calls) == 1 and cache.is_file()
    again = ensure_instrument(protocol(judge), voice, cache, log=lambda *a: None)
    assert not again.measured_now and len(calls) == 1 and again.result == first.result
    # the same judge at another path is the same judge
    twin = tmp_path / "elsewhere" / "face.ckpt"
    twin.parent.mkdir()
    twin.write_bytes(judge.read_bytes())
    assert not ensure_instrument(protocol(twin), voice, cache, log=lambda *a: None).measured_now
    # another judge: measured again, and kept for the next call
    other = tmp_path / "other" / "face.ckpt"
    other.parent.mkdir()
    other.write_bytes(b"judge v2")
    changed = ensure_instrument(protocol(other), voice, cache, log=lambda *a: None)
    assert changed.measured_now and calls[-1] == (b"judge v2", b"voice v1")
    assert changed.result != first.result
    assert not ensure_instrument(protocol(other), voice, cache, log=lambda *a: None).measured_now
    # another voice embedder, or another manifest: measured again
    voice.write_bytes(b"voice v2")
    os.utime(voice, ns=(1, 1))
    assert ensure_instrument(protocol(other), voice, cache, log=lambda *a: None).measured_now
    manifest.write_bytes(b'{"other": 1}')
    assert ensure_instrument(protocol(other), voice, cache, log=lambda *a: None).measured_now
    assert len(calls) == 4
    kept = json.loads(cache.read_text())
    assert kept["key"]["judge_sha1"] == sha1_file(other)
    assert kept["key"]["voice_sha1"] == sha1_file(voice)
    assert kept["key"]["manifest_sha1"] == sha1_file(manifest)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left


def test_the_instruments_voice_embedder_is_the_gan_configs_and_real_data_has_none(tmp_path):
    """The voice embedder is ``model.voice`` of the gan row's config under the run's profile,
    even when the gan row is not run; on data that is not a synthetic world there is no
    instrument, and the sentence says why."""
    from voice2face.results import configure, instrument_voice, table_instrument

    world = tmp_path / "world"
    write_fake_dataset(world)
    by_key = {e.key: e for e in entries()}
    for profile, stem in (("cpu", "dimnet"), ("paper", "voice")):
        overrides = [f"profile={profile}"]
        for keys in (["gan"], ["cae-full"], ["regression-l1"]):
            chosen = [by_key[k] for k in keys]
            configured = [configure(e, world, overrides) for e in chosen]
            voice = instrument_voice(chosen, configured, world, overrides)
            assert voice == world / "pretrained" / f"{stem}.ckpt", (profile, keys)
            gan_cfg = load_config("gan", [f"data.root={world}", *overrides])
            assert voice == Path(gan_cfg.model.voice)
    overrides = ["profile=cpu", f"model.voice={tmp_path / 'mine.ckpt'}"]
    chosen = [by_key["gan"]]
    assert instrument_voice(chosen, [configure(by_key["gan"], world, overrides)], world,
                            overrides) == tmp_path / "mine.ckpt"
    judge = tmp_path / "judge.ckpt"
    judge.write_bytes(b"judge")
    voice = tmp_path / "voice.ckpt"
    voice.write_bytes(b"voice")
    why = table_instrument(Protocol(world, judge), voice, tmp_path / "cache.json")
    assert isinstance(why, str) and "synthetic world" in why
    assert not (tmp_path / "cache.json").exists()


# --- slow: make results on a tiny world, twice, and once changed --------------------------------

QUICK = ["data.batch_size=4", "data.num_workers=0", "data.crop_seconds=0.3", "logger.wandb=false",
         "trainer.val_check_interval=100", "run.checkpoint_every=100", "profile=cpu"]


def rows_on_disk(text: str) -> list[RowResult]:
    """The rows of a written file, rebuilt from the run folders its Runs table names."""
    _, runs = md_table(text, "row")
    by_key = {e.key: e for e in entries()}
    out = []
    for key, cells in runs.items():
        folder = Path(cells[0].strip("`"))
        path = folder / EVAL / "metrics.json"
        out.append(RowResult(by_key[key], folder, json.loads(path.read_text()), path,
                             json.loads((folder / RECORD).read_text())))
    return out


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_results_on_a_tiny_world_reuses_finished_runs_and_retrains_changed_ones(tmp_path):
    world, runs, out = tmp_path / "world", tmp_path / "runs", tmp_path / "docs" / "results.md"
    args = " ".join([*QUICK, "trainer.max_steps=2", f"run.root={runs}"])
    pretrain = " ".join([*QUICK, "trainer.max_steps=3", f"run.root={runs}"])
    done = subprocess.run(["make", "--no-print-directory", "results", f"DATA={world}",
                           "PRESET=tiny", f"RESULTS={out}", f"ARGS={args}",
                           f"PRETRAIN_ARGS={pretrain}"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    rows = rows_on_disk(text)
    assert [r.entry.key for r in rows] == [e.key for e in entries()]
    # the tiny world is synthetic: the instrument is measured and kept with the runs
    instrument = json.loads(instrument_cache(runs, world).read_text())["instrument"]
    bound = bound_of(instrument)
    check_table(text, rows, bound)
    assert "## Instrument: bounds and controls" in text
    for r in rows:  # its real faces are evaluate's: the same data, judge and computation
        if not own_space(r.entry.method):
            real = r.metrics["rows"]["real_faces"]
            for key in ("match_1to2", "match_1to2_gender"):
                assert instrument["rows"]["real_faces"][key] == pytest.approx(real[key],
                                                                              abs=1e-6)
    assert (out.parent / "images" / "results-grid.png").is_file()
    assert "make results DATA=" in text  # the command that regenerates it
    finals = {r.entry.key: (r.folder / "checkpoints" / "final.ckpt").stat().st_mtime_ns
              for r in rows}

    # again: every run is reused, nothing is trained
    command = [str(REPO / ".venv" / "bin" / "voice2face"), "results", "--data", str(world),
               "--out", str(out), *args.split()]
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    for r in rows:
        assert f"voice2face results: {r.entry.key}: reusing {r.folder} (finished" in again.stdout
        assert (r.folder / "checkpoints" / "final.ckpt").stat().st_mtime_ns == finals[r.entry.key]
    assert f"({len(rows)} rows; 0 trained, {len(rows)} reused)" in again.stdout
    assert "training in" not in again.stdout
    assert "voice2face results: reusing the instrument" in again.stdout
    check_table(out.read_text(), rows_on_disk(out.read_text()), bound)

    # a changed config trains a new run; the old one stays
    changed = subprocess.run([*command[:-len(args.split())], *args.replace(
        "trainer.max_steps=2", "trainer.max_steps=3").split(), "--only", "gan"],
        cwd=REPO, capture_output=True, text=True)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "voice2face results: gan: training in" in changed.stdout
    (gan,) = rows_on_disk(out.read_text())
    old = next(r for r in rows if r.entry.key == "gan")
    assert gan.folder != old.folder and old.folder.is_dir()
    assert gan.record["max_steps"] == 3 and gan.record["train_seconds"] > 0
    assert torch.load(gan.folder / "checkpoints" / "final.ckpt", weights_only=False,
                      map_location="cpu")["global_step"] == 3 * METHODS["gan"].steps_per_batch

    # --retrain: the same settings trained again (a code change), the finished run kept aside
    retrained = subprocess.run([*command[:-len(args.split())], *args.replace(
        "trainer.max_steps=2", "trainer.max_steps=3").split(), "--only", "gan",
        "--retrain", "gan"], cwd=REPO, capture_output=True, text=True)
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    assert f"voice2face results: gan: training in {gan.folder} (no run folder)" in retrained.stdout
    (aside,) = gan.folder.parent.glob(f"{gan.folder.name}.replaced-*")
    assert (aside / "checkpoints" / "final.ckpt").is_file() and (aside / RECORD).is_file()
    (again_gan,) = rows_on_disk(out.read_text())
    assert again_gan.folder == gan.folder and again_gan.record["finished_at"] >= gan.record[
        "finished_at"] and again_gan.record["digest"] == gan.record["digest"]
    wrong = subprocess.run([*command, "--only", "gan", "--retrain", "cae-full"], cwd=REPO,
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "--retrain: unknown row(s) cae-full" in wrong.stderr


def test_ctrl_c_says_which_rows_are_kept_and_what_was_running(monkeypatch, capsys):
    import voice2face.results as results
    from voice2face.errors import report

    def interrupted_while_evaluating():
        results._PROGRESS.update(done=["gan"], now="evaluating cae (runs/cae is finished and kept)")
        raise KeyboardInterrupt
    monkeypatch.setattr(results, "_PROGRESS", {"done": [], "now": None})
    assert report("voice2face results", interrupted_while_evaluating,
                  interrupted=results._interrupted) == 130
    err = capsys.readouterr().err
    assert "interrupted while evaluating cae (runs/cae is finished and kept)" in err
    assert "rows finished: gan" in err and "run the same command again" in err
