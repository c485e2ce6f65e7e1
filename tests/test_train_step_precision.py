"""benchmarks/train_step.py at the paper profiles' precision and layout: ``--precision
bf16-mixed --channels-last`` runs both sides and prints the peak-memory columns (``-`` on a
CPU); the GPU check script calls it through this command line."""

from __future__ import annotations

import torch

from helpers import SMALL


def test_bf16_and_channels_last_through_the_command_line(bench, fake_root, pretrained, capsys):
    bench.main(["--data", str(fake_root), "--pretrained", str(pretrained), "--methods", "gan",
                "cae", "--steps", "1", "--warmup", "1", "--threads", "1", "--no-progress-bar",
                "--precision", "bf16-mixed", "--channels-last", "--set", *SMALL])
    out = capsys.readouterr().out
    assert "precision bf16-mixed, channels-last" in out and "MiB suite" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("gan ", "cae "))]
    assert [r[:3] for r in rows] == [["gan", "cpu", "6"], ["cae", "cpu", "6"]]
    assert all(float(r[4]) > 0 and float(r[5]) > 0 and r[13:15] == ["-", "-"] for r in rows)


def test_channels_last_is_the_command_line_s_at_every_profile(bench, fake_root, pretrained):
    """The paper profile turns model.channels_last on; the benchmark's layout is its own
    flag's, so an fp32 run at the paper sizes is NCHW."""
    for flag in (False, True):
        case = bench.make_case("face", fake_root, "paper", pretrained, SMALL, "cpu", flag)
        assert case.cfg["model"]["channels_last"] is flag
        conv = next(p for p in case.module.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) is flag
