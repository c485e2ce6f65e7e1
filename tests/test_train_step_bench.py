"""benchmarks/train_step.py compares like with like: its plain PyTorch loop makes the same
update as the suite's Lightning training_step, from the same weights on the same batch."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from test_methods import pretrained_nets

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "train_step.py"
SMALL = ["data.batch_size=6", "data.crop_seconds=0.3"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pretrained(fake_root) -> Path:
    return pretrained_nets(fake_root)


class SeedEachBatch(Callback):
    """The global RNG seeded at the start of every batch, as the plain loop is below: the
    DataLoader's iterator draws from it once before the first batch of a fit."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(1000 + batch_idx)


def same_update(bench, case, steps: int):
    """The state of the suite's and of the plain loop's module after ``steps`` batches, the
    plain loop's last losses, and the suite's logged metrics."""
    plain = bench.PlainLoop(case)
    suite = copy.deepcopy(case)
    for i in range(steps):
        torch.manual_seed(1000 + i)
        losses = plain.step(i)
    trainer = bench.fit_suite(suite, steps, callbacks=[SeedEachBatch()], progress_bar=False)
    assert trainer.global_step == steps * case.steps_per_batch
    return suite.module.state_dict(), plain.m.state_dict(), losses, trainer.callback_metrics


@pytest.mark.parametrize("steps", [1, 3])
def test_plain_loop_makes_the_gan_update_of_the_suite(bench, fake_root, pretrained, steps):
    # no embedding noise, embedder on the batch's crops: nothing random in the update
    case = bench.make_case("gan", fake_root, "cpu", pretrained,
                           [*SMALL, "model.cache_voice=false", "model.embedding_noise=0"])
    before = case.module.state_dict()
    suite, plain, losses, logged = same_update(bench, case, steps)
    assert suite.keys() == plain.keys() and any(k.startswith("critic.") for k in suite)
    for k in suite:  # the frozen voice embedder's are equal trivially
        torch.testing.assert_close(suite[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.equal(before[k], suite[k]) for k in suite if k.startswith("generator."))
    # the last batch's losses (the suite logs the critic's as its discriminator and
    # classifier terms plus the gender term, and the generator's adversarial one)
    d = logged["train/loss_d"] + logged["train/loss_c"] + logged["train/loss_gender_real"]
    torch.testing.assert_close(d, losses["loss_d"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,overrides", [
    ("cgan", []),  # z and the embedding noise: the same draws from the same global RNG state
    ("gan", []),   # embedding noise and the cached embeddings of the cpu profile
    ("cae", []), ("regression", []), ("dimnet", []), ("voice", []), ("face", []),
    ("face_decoder", [])])
def test_plain_loop_makes_every_method_s_update(bench, fake_root, pretrained, method, overrides):
    """Random draws in a step (embedding noise, z) come from the global RNG, seeded alike at
    each batch on both sides, and the CAE's pairing from its own seeded generator, so every
    method's update agrees."""
    case = bench.make_case(method, fake_root, "cpu", pretrained, [*SMALL, *overrides])
    suite, plain, _, _ = same_update(bench, case, 2)
    assert suite.keys() == plain.keys() and suite
    for k in suite:
        torch.testing.assert_close(suite[k], plain[k], rtol=1e-4, atol=1e-5, msg=k)


def test_the_script_prints_its_table(bench, fake_root, pretrained, capsys):
    bench.main(["--data", str(fake_root), "--pretrained", str(pretrained), "--methods", "gan",
                "voice", "--steps", "2", "--warmup", "1", "--threads", "1",
                "--no-progress-bar", "--set", *SMALL])
    out = capsys.readouterr().out
    assert "suite/plain" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("gan ", "voice "))]
    assert [r[:3] for r in rows] == [["gan", "cpu", "6"], ["voice", "cpu", "6"]]
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in rows)
