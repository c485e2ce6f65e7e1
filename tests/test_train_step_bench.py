"""benchmarks/train_step.py: its timer splits a step into the method's time and Lightning's as a
fake clock says it should, its plain GAN loop computes the GAN module's losses and update from
the same weights on the same batch, and every registered method gets a row of its table."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from helpers import REPO, SMALL, load_script
from voice2face.methods import METHODS

# --- the timer, against a fake clock --------------------------------------------------------

class FakeClock:
    """Time moves only when a test says so; on a GPU, every reading must follow a sync."""

    def __init__(self):
        self.now, self.synced = 0.0, False

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        assert self.synced, "the clock was read without waiting for the device"
        self.synced = False
        return self.now


class TickingSGD(torch.optim.SGD):
    """SGD whose step (around the closure, when given one) takes 2 s."""

    def __init__(self, params, clock: FakeClock):
        super().__init__(params, lr=0.1)
        self.clock = clock

    def step(self, closure=None):
        loss = super().step(closure)
        self.clock.advance(2)
        return loss


class Ticking(L.LightningModule):
    """The method's code takes 1 s after the batch's transfer, 3 s in training_step and 2 s in
    the optimizer's step; under manual optimization the step is inside training_step, under
    automatic training_step is inside the step's closure."""

    def __init__(self, clock: FakeClock, manual: bool):
        super().__init__()
        self.clock, self.automatic_optimization = clock, not manual
        self.w = torch.nn.Parameter(torch.zeros(1))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.clock.advance(1)
        return batch

    def training_step(self, batch, batch_idx):
        self.clock.advance(3)
        loss = (self.w * batch).sum()
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss

    def configure_optimizers(self):
        return TickingSGD([self.w], self.clock)


class LightningTakes(Callback):
    """Lightning's own part of every batch: 4 s."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.clock.advance(4)


@pytest.mark.parametrize("manual", [False, True])
def test_the_timer_splits_each_batch_into_the_method_s_time_and_lightning_s(
        bench, monkeypatch, manual):
    clock = FakeClock()
    # a "GPU" whose sync the clock checks for: the timer must wait for it before each reading
    monkeypatch.setattr(torch.cuda, "synchronize",
                        lambda device=None: setattr(clock, "synced", True))
    timer = bench.StepTimer("cuda", clock)
    module = Ticking(clock, manual)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer, LightningTakes(clock)])
    trainer.fit(module, DataLoader([torch.ones(2)] * 3, batch_size=None))
    # 1 + 3 + 2 s of the method's, counted once however the regions nest, and 4 of Lightning's
    assert timer.walls == [10, 10, 10] and timer.inside == [6, 6, 6]
    timing = bench.Timing(timer.walls[1:], timer.inside[1:], batch_size=5)
    assert (timing.steps_per_s, timing.samples_per_s) == (0.1, 0.5)
    assert timing.inside_ms == 6000 and timing.lightning_share == pytest.approx(0.4)
    # the wrappers are gone after the fit: the module and its optimizer are as they were
    assert not {"training_step", "on_after_batch_transfer"} & set(vars(module))
    assert "step" not in vars(trainer.optimizers[0])


# --- the plain GAN loop against the module --------------------------------------------------

class SeedAndRecord(Callback):
    """The global RNG seeded at the start of every batch, as the plain loop is below (the
    DataLoader's iterator draws from it once before the first batch of a fit), and the losses
    the module logged at its end."""

    def __init__(self):
        self.logged = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(1000 + batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append({k[len("train/"):]: v.clone() for k, v in
                            trainer.callback_metrics.items() if k.startswith("train/loss")})


@pytest.mark.parametrize("method,overrides", [
    ("gan", []),  # the cpu profile: voice cache, embedding noise, gender head, L1 to the face
    ("gan", ["model.cache_voice=false"]),  # the embedder on the batch's crops every step
    ("cgan", []),  # z encoded from the real face (the cpu profile) and the projection critic
    ("cgan", ["model.encode_noise=false"]),  # a plain z
    ("cgan", ["model.prior_share=0.5"]),  # half the batch's z from N(0, I)
])
def test_the_plain_gan_computes_the_module_s_losses_and_update(bench, fake_root, pretrained,
                                                                method, overrides):
    case = bench.make_case(method, fake_root, "cpu", pretrained, [*SMALL, *overrides])
    plain = bench.PlainGan.of(case)
    suite = copy.deepcopy(case)
    record = SeedAndRecord()
    trainer = bench.fit_suite(suite, 3, callbacks=[record], progress_bar=False)
    assert trainer.global_step == 3 * case.steps_per_batch
    for i, logged in enumerate(record.logged):
        torch.manual_seed(1000 + i)
        losses = plain.step(dict(case.batch))
        assert losses.keys() == logged.keys(), i  # every term the module logs, no other
        for k, v in losses.items():
            torch.testing.assert_close(v, logged[k], rtol=1e-5, atol=1e-6, msg=f"batch {i}: {k}")
    # the same three updates of both nets
    for name in ("generator", "critic") + (("encoder",) if plain.encoder is not None else ()):
        before, after = (getattr(m.module, name).state_dict() for m in (case, suite))
        assert any(not torch.equal(before[k], after[k]) for k in after), name
        for k, v in getattr(plain, name).state_dict().items():
            torch.testing.assert_close(v, after[k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")


# --- the table ------------------------------------------------------------------------------

def test_every_registered_method_gets_a_row(bench, fake_root, pretrained, capsys):
    bench.main(["--data", str(fake_root), "--pretrained", str(pretrained), "--steps", "2",
                "--warmup", "1", "--threads", "1", "--no-progress-bar", "--set", *SMALL])
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("method "))
    rows = [r for r in map(str.split, lines[head + 1:]) if r and r[0] in METHODS]
    assert [r[0] for r in rows] == list(METHODS)
    for r in rows:
        method, profile, batch, steps, samples, inside, share = (r[0], r[1], int(r[2]),
                                                                 float(r[4]), float(r[5]),
                                                                 float(r[7]), r[8])
        assert (profile, batch) == ("cpu", 6)
        assert samples == pytest.approx(steps * batch, rel=0.01, abs=0.03), method
        assert inside > 0 and share.endswith("%") and 0 <= float(share[:-1]) < 100, method
        plain, ratio = r[10:12]
        if method in bench.PLAIN:
            assert float(plain) > 0 and float(ratio) == pytest.approx(samples / float(plain),
                                                                       rel=0.02)
        else:
            assert (plain, ratio) == ("-", "-"), method
        assert r[13:15] == ["-", "-"], method  # no GPU memory on a CPU


def test_gpu_check_reads_the_table(bench, fake_root, pretrained, capsys):
    """benchmarks/gpu_check.py runs this script and reads a sub-row per method from its table."""
    gpu_check = load_script("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    bench.main(["--data", str(fake_root), "--pretrained", str(pretrained), "--methods", "gan",
                "voice", "--steps", "1", "--warmup", "1", "--threads", "1",
                "--no-progress-bar", "--set", *SMALL])
    check = gpu_check.Check("train_step fp32", [], 1)
    check.lines = [(0.0, line + "\n") for line in capsys.readouterr().out.splitlines()]
    assert gpu_check.key_train_step(check) == "2 methods"
    assert [row[0] for row in check.rows] == ["gan", "voice"]
