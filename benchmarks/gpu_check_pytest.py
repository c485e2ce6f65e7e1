"""pytest plugin of benchmarks/gpu_check.py (``-p benchmarks.gpu_check_pytest``).

A GPU node gets wandb and av only with ``make gpu-check-wheels FULL=1`` (60 MiB more than the
44 MiB of the other wheels). Without them, a test or test module that fails only because
one of them does not import is reported as skipped, naming it, instead of failed; any other
failure stays a failure. With both installed this plugin changes nothing.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

ABSENT = tuple(m for m in ("wandb", "av") if importlib.util.find_spec(m) is None)
HINT = "not installed on this node (make gpu-check-wheels FULL=1 carries it)"


def missing_module(exc: BaseException | None) -> str | None:
    """The absent package that ``exc`` (or an exception it was raised from) failed to import.
    Lightning's WandbLogger raises ModuleNotFoundError("Requirement 'wandb>=...' not met")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError):
            name = (exc.name or "").split(".")[0]
            if name in ABSENT:
                return name
            for m in ABSENT:
                if re.search(rf"['`\"]{m}\b", str(exc)):
                    return m
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not ABSENT or not report.failed or call.excinfo is None:
        return
    name = missing_module(call.excinfo.value)
    if name:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: needs {name}, {HINT}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if not ABSENT or not report.failed:
        return
    m = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", str(report.longrepr))
    if m and m[1].split(".")[0] in ABSENT:
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), 0,
                           f"Skipped: needs {m[1].split('.')[0]}, {HINT}")
        report.result = []
