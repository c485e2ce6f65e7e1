"""The suite's own settings: every test has a time limit, so a hung one fails with its stack
instead of holding ``make test`` until CI's limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_has_a_default_time_limit(pytestconfig):
    assert 0 < float(pytestconfig.getini("timeout")) <= 600


def test_a_hung_test_fails_with_its_stack(tmp_path):
    (tmp_path / "test_hangs.py").write_text(
        "import threading\n\n"
        "def test_waits_forever():\n"
        "    threading.Event().wait()  # as a rank waiting for a peer that is gone\n")
    # the repository's pytest settings, with the limit lowered to one second
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
                           "-o", "timeout=1", str(tmp_path / "test_hangs.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Timeout" in proc.stdout and "test_waits_forever" in proc.stdout
    assert "1 failed" in proc.stdout
