"""One command that proves the GPU path (issue 23): ``make gpu-check OUT=folder`` on a GPU node.

    python3 benchmarks/gpu_check.py [--out DIR] [--wheels DIR] [--budget S] [--methods M ...]
        [--pytest ARGS] [--test-shards N] [--jobs N] [--allow-cpu] [--dry-run] [--keep]
    python3 benchmarks/gpu_check.py --wheel-list [--full]   # what `make gpu-check-wheels` fetches

Made for a GPU node that has Python 3.12 with its own torch, torchaudio, lightning and
torchmetrics, reaches no package index and never ran ``make install``: the packages of
``benchmarks/gpu-check-packages.txt`` come as wheels from ``--wheels`` (``make
gpu-check-wheels`` on a connected machine) and are installed with ``pip --no-index --no-deps
--target`` into a temporary folder (seconds, each run); everything runs from the checkout
(PYTHONPATH), ``python -m voice2face.cli`` standing in for the console script. W&B is off in
every run (``logger.wandb=false``), so wandb may be absent.

The checks, each a subprocess with its own time cap, its output in ``OUT/NN-<check>.log``:

1. device, wheels, imports: the GPU torch sees; the wheels installed; what the methods import
   and, from the registry (``voice2face.methods``, what make reads too), the pretrained nets
   their ``paper`` profiles need and the run that makes each.
2. tests k/N: ``pytest -m "not slow"``, its files split over N processes. The suite has no
   device switch: tests that train through ``voice2face.training`` take
   ``trainer.accelerator=auto``, so the GPU; those that build their own
   ``Trainer(accelerator="cpu")`` stay on the CPU. A test that fails only because wandb or av
   is absent (not carried unless FULL=1) is reported as skipped
   (``benchmarks/gpu_check_pytest.py``); the two tests that compare the installed stack with
   the lock are deselected (the node's stack is its own: the imports row compares it).
3. synth: a tiny world, 48 identities (16 training shards, so that 16 loader workers have one).
4. pretrained <net>: the nets the paper profiles need, each by its registry run
   (``PRETRAINED``), a few steps each, in dependency order.
5. paper <method>: every registered method's ``paper`` profile in bf16-mixed, a few steps with
   validation and the test evaluation; ``--jobs`` at a time on the one GPU.
6. ddp gan: ``voice2face train gan`` on 2 ranks: NCCL over 2 GPUs; with one GPU, 2 ranks on it
   over gloo (NCCL refuses two ranks on one device), started here as two nodes of one device.
7. train_step fp32, train_step bf16-cl: ``benchmarks/train_step.py`` at the paper sizes, one
   row per method with the suite/plain ratio and, where the script reports it, peak memory.
8. datamodule: ``benchmarks/datamodule.py`` on the tiny world (at 8 and 16 loader workers
   where the script takes ``--workers``).

The tests run beside 3-6; 7 and 8 run alone after them, so that nothing else loads the machine
while they time. Every cap is cut to what is left of ``--budget`` (default 530 s: the issue's 9
minutes, less the table), keeping the time 7 and 8 need. The summary table is printed last and
written to OUT/summary.txt; the exit status is 1 if any check failed, 2 if the checks could not
start (among others: no CUDA device without ``--allow-cpu``).

``--allow-cpu`` runs the same checks tiny on the CPU (batches of 8, two-step benchmarks, the
2-rank gloo launch on CPU ranks), to test this script where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# Only the standard library at module level: this process runs before the wheels are installed.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from voice2face.environment import LOCK, locked_versions  # noqa: E402  (standard library only)

PACKAGES = ROOT / "benchmarks" / "gpu-check-packages.txt"
GROUPS = ("core", "full", "none")
OPTIONAL = ("wandb", "av")  # the `full` group's imports: without them tests are skipped, not failed
TORCH_STACK = ("torch", "torchaudio", "lightning", "torchmetrics")  # what the GPU node brings
# tests of "is this the locked environment": the node's torch stack is its own
DESELECT = ("tests/test_environment.py::test_installed_torch_pair_is_the_locked_pair",
            "tests/test_environment.py::test_compiled_extensions_load")
WORLD = ["--preset", "tiny", "--identities", "48"]


# --- the wheels ---------------------------------------------------------------------------

def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_packages(path: Path = PACKAGES) -> dict[str, str]:
    """``{canonical name: group}`` of the packages file (``name group  # why`` lines)."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or words[1] not in GROUPS:
            raise ValueError(f"{path}:{n}: expected 'name group', group one of {GROUPS}: {line!r}")
        out[canonical(words[0])] = words[1]
    return out


def wheel_list(full: bool = False, packages: dict[str, str] | None = None,
               lock: Path = LOCK) -> list[str]:
    """``name==version`` of every package to carry, at the lock's version."""
    pins = locked_versions(lock)
    groups = ("core", "full") if full else ("core",)
    names = [n for n, g in (packages or read_packages()).items() if g in groups]
    missing = [n for n in names if n not in pins]
    if missing:
        raise ValueError(f"{PACKAGES.name} names packages that {lock.name} does not pin: "
                         f"{', '.join(missing)}")
    return [f"{n}=={pins[n]}" for n in names]


# --- probes: run in a subprocess, with the node's packages and the wheels ------------------

def probe_device() -> dict:
    import torch
    cuda = torch.cuda.is_available()
    info = {"python": sys.version.split()[0], "torch": torch.__version__,
            "cuda_build": torch.version.cuda, "cuda": cuda, "cores": os.cpu_count()}
    if cuda:
        n = torch.cuda.device_count()
        info.update(gpus=n, names=[torch.cuda.get_device_name(i) for i in range(n)],
                    bf16=torch.cuda.is_bf16_supported(),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info



def probe_plan(profile: str) -> dict:
    """The registry: its methods, the pretrained nets each needs under ``profile`` and the run
    that makes each net (``voice2face.methods``: what make builds, nothing listed here), the
    order to build them in; and what is installed of the lock's packages."""
    import importlib.metadata
    import importlib.util

    import voice2face.cli  # noqa: F401  (what `python -m voice2face.cli` imports first)
    from voice2face.methods import METHODS, PRETRAINED, pretrained_needs

    needs = {m: pretrained_needs(m, profile) for m in sorted(METHODS)}
    deps = {n: pretrained_needs(method, profile, overrides)
            for n, (method, overrides) in PRETRAINED.items()}
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise SystemExit(f"the registry's pretrained nets need each other: "
                             f"{' <- '.join((*path, name))}")
        if name not in order:
            for dep in deps[name]:
                visit(dep, (*path, name))
            order.append(name)

    for names in needs.values():
        for name in names:
            visit(name, ())
    pins = locked_versions()
    versions = {}
    for dist in TORCH_STACK:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"methods": sorted(METHODS), "needs": needs, "order": order,
            "deps": {n: deps[n] for n in order},
            "makers": {n: [PRETRAINED[n][0], *PRETRAINED[n][1]] for n in order},
            "versions": versions,
            "locked": {d: pins.get(d) for d in TORCH_STACK},
            "absent": [m for m in OPTIONAL if importlib.util.find_spec(m) is None]}


# --- DDP of two ranks on one device over gloo ----------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_gloo_launch(train_args: list[str]) -> int:
    """Two processes of ``voice2face train``, each a "node" of one device (LOCAL_RANK 0,
    NODE_RANK 0 and 1), so that both use device 0, over gloo: what DDP needs to run on one GPU.
    Lightning takes the ranks from the environment (it starts no process itself)."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "NODE_RANK": str(rank), "LOCAL_RANK": "0", "RANK": str(rank), "WORLD_SIZE": "2"}
        env.pop("VOICE2FACE_RUN_NAME", None)
        procs.append(subprocess.Popen([sys.executable, __file__, "--ddp-gloo-rank", "--",
                                       *train_args], env=env))
    while any(p.poll() is None for p in procs):
        if any(p.returncode not in (None, 0) for p in procs):
            time.sleep(15)  # the other rank may finish its error report, then it waits forever
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.5)
    codes = [p.wait() for p in procs]
    print(f"gpu_check: ddp ranks exited with {codes}", flush=True)
    return max(codes, key=abs)


def ddp_gloo_rank(train_args: list[str]) -> int:
    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    # find_unused_parameters: the GAN's two optimizer steps each leave a net without gradients
    StrategyRegistry.register("ddp_gloo", DDPStrategy, "DDP over gloo (gpu_check)",
                              process_group_backend="gloo", find_unused_parameters=True)
    from voice2face.cli import main
    return main(train_args)


# --- running checks -----------------------------------------------------------------------

@dataclass
class Check:
    name: str
    cmd: list[str]
    cap: float                                    # seconds, before the budget cuts it
    needs: tuple[str, ...] = ()                   # checks that must have passed first
    env: dict[str, str] = field(default_factory=dict)
    key: Callable[[Check], str] | None = None     # key numbers from the output
    note: str = ""                                # key numbers known before it runs
    ok_codes: tuple[int, ...] = (0,)              # exit statuses that pass
    status: str = "not run"
    seconds: float = 0.0
    numbers: str = ""
    log: Path | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds, line)
    rows: list[tuple[str, str, float | None, str]] = field(default_factory=list)  # sub-rows

    @property
    def text(self) -> str:
        return "".join(line for _, line in self.lines)


class Runner:
    def __init__(self, out: Path, env: dict[str, str], quiet: bool = False):
        self.out, self.env, self.quiet = out, env, quiet
        self.start = time.monotonic()
        self.checks: dict[str, Check] = {}
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def add(self, check: Check) -> Check:
        slug = re.sub(r"[^a-z0-9.]+", "-", check.name.lower())
        check.log = self.out / f"{len(self.checks):02d}-{slug}.log"
        self.checks[check.name] = check
        return check

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{self.elapsed():5.0f}s] {text}", flush=True)

    def run(self, check: Check, deadline: float) -> bool:
        """Run ``check`` within its cap and the deadline; whether it passed."""
        failed = [n for n in check.needs if self.checks[n].status != "ok"]
        timeout = min(check.cap, deadline - time.monotonic())
        if failed or timeout < 5 or self.stopping:
            check.status = "FAILED"
            check.numbers = (f"not run: {failed[0]} failed" if failed else
                             "not run: interrupted" if self.stopping else
                             "not run: out of time")
            self.say(f"{check.name}: {check.numbers}")
            return False
        self.say(f"{check.name}: started (cap {timeout:.0f} s)")
        env = {**self.env, **check.env}
        t0 = time.monotonic()
        with open(check.log, "w") as log:
            log.write(f"$ {shlex.join(check.cmd)}\n")
            log.flush()
            proc = subprocess.Popen(check.cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
            with self.lock:
                self.procs.add(proc)

            def read():
                for line in proc.stdout:
                    log.write(line)
                    check.lines.append((time.monotonic() - t0, line))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill(proc)
                rc = proc.wait()
            reader.join(timeout=10)
            with self.lock:
                self.procs.discard(proc)
            check.seconds = time.monotonic() - t0
            log.write(f"\n# exit status {rc} after {check.seconds:.1f} s"
                      f"{' (killed: time cap reached)' if timed_out else ''}\n")
        check.status = "ok" if rc in check.ok_codes and not timed_out else "FAILED"
        try:
            numbers = check.key(check) if check.key else ""
        except Exception as e:  # a changed output format must not lose the other rows
            numbers = f"(output not understood: {e})"
        numbers = ", ".join(s for s in (check.note, numbers) if s)
        if timed_out:
            numbers = f"timed out at {timeout:.0f} s" + (f"; {numbers}" if numbers else "")
        elif rc not in check.ok_codes:
            numbers = f"exit {rc}: {last_error(check.text)}" + (f"; {numbers}" if numbers else "")
        check.numbers = numbers
        self.say(f"{check.name}: {check.status} in {check.seconds:.1f} s {numbers}")
        return check.status == "ok"

    def stop(self) -> None:
        self.stopping = True
        with self.lock:
            for proc in list(self.procs):
                kill(proc)


def kill(proc: subprocess.Popen) -> None:
    """The check's whole process group (DDP ranks, loader workers): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def last_error(text: str) -> str:
    """The line that says what went wrong, shortened: a traceback's last line or the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("# exit")]
    for ln in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b|^voice2face[\w ]*: |^E  ", ln):
            return ln[:160]
    return lines[-1][:160] if lines else "no output"


# --- key numbers --------------------------------------------------------------------------

def key_tests(c: Check) -> str:
    """pytest's last line: "12 passed, 3 skipped, 2 deselected in 45.67s" (less the time)."""
    found = re.findall(r"^[= ]*(\d+ (?:passed|failed|skipped|deselected|errors?)\b.*?)"
                       r"(?: in [\d.]+s\b.*)?[= ]*$", c.text, re.M)
    return found[-1] if found else ""


def key_synth(c: Check) -> str:
    m = re.search(r"samples: (train \d+ \(\d+ shards\))", c.text)
    return m[1] if m else ""


def key_train(c: Check) -> str:
    m = re.search(r"evaluated on the test split: (1:2 match [\d.]+)", c.text)
    if m:
        return f"test {m[1]}"
    return "trained" if "voice2face: trained" in c.text else ""


def key_train_step(c: Check) -> str:
    """One sub-row per method: the suite/plain ratio, samples/s, and the memory columns the
    script prints (``MiB ...``, ``peak ...``). Columns are read by the header's |-groups."""
    lines = c.text.splitlines()
    head = next((i for i, ln in enumerate(lines) if "suite/plain" in ln), None)
    if head is None:
        return ""

    def labels(group: str) -> list[str]:
        found = re.findall(r"(?:MiB|peak)\s*\w*", group)
        return [f.strip() for f in found] if found else group.split()

    names = [labels(g) for g in lines[head].split("|")]
    done = [t for t, ln in c.lines if ln.lstrip().startswith("done:")]
    rows = []
    for ln in lines[head + 1:]:
        groups = [g.split() for g in ln.split("|")]
        if len(groups) != len(names) or any(len(g) != len(n) for g, n in zip(groups, names)):
            continue  # not a row of the table
        row = {k: v for n, g in zip(names, groups) for k, v in zip(n, g)}
        if not row.get("batch", "").isdigit():
            continue
        text = (f"suite/plain {row['suite/plain']} (suite {row['suite']}, plain {row['plain']} "
                f"samples/s, batch {row['batch']})")
        memory = [f"{k} {v}" for k, v in row.items() if ("MiB" in k or "peak" in k) and v != "-"]
        rows.append((row["method"], text + "".join(f", {m}" for m in memory)))
    for i, (method, text) in enumerate(rows):
        seconds = done[i] - (done[i - 1] if i else 0.0) if i < len(done) else None
        c.rows.append((method, "ok", seconds, text))
    return f"{len(rows)} method{'s' if len(rows) != 1 else ''}"


def key_datamodule(c: Check) -> str:
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", c.text, re.M)  # workers, full, decode-only
    if rows:
        return "; ".join(f"{w} workers {full} samples/s (decode-only {raw})"
                         for w, full, raw in rows)
    # per-worker rates, one row per paper data setting: batch crop stft audio rate ...
    rates = [int(r) for r in re.findall(
        r"^\s*\d+\s+[\d.]+\s+(?:True|False)\s+(?:True|False)\s+(\d+)", c.text, re.M)]
    return f"one worker feeds {min(rates)}-{max(rates)} samples/s" if rates else ""


def key_ddp(c: Check) -> str:
    return key_train(c)


# --- the plan -----------------------------------------------------------------------------

@dataclass
class Mode:
    """What differs between a GPU node and --allow-cpu."""
    gpu: bool
    run: list[str]            # overrides of every training run
    steps: int                # training batches of each run
    jobs: int                 # paper runs at a time
    bench: list[str]          # train_step.py's options besides precision
    workers: list[str]        # datamodule.py's loader workers
    samples: str              # datamodule.py's samples per measurement
    scale: float              # time caps x this


def mode_for(gpu: bool, jobs: int | None) -> Mode:
    if gpu:
        return Mode(True, [], 4, jobs or 3, ["--device", "cuda", "--steps", "20", "--warmup", "5"],
                    ["8", "16"], "600", 1.0)
    small = ["data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0",
             "trainer.accelerator=cpu"]
    return Mode(False, small, 2, jobs or 1,
                ["--device", "cpu", "--steps", "2", "--warmup", "1", "--threads", "1",
                 "--set", "data.batch_size=8"], ["1", "2"], "40", 3.0)


CAPS = {"device": 60, "wheels": 120, "imports": 90, "synth": 60, "pretrained": 60, "paper": 90,
        "ddp": 120, "train_step": 100, "datamodule": 60}


def test_shards(pytest_args: list[str] | None, shards: int) -> list[list[str]]:
    """pytest's arguments per process: the fast suite's files dealt by size (a proxy of their
    time), or the given arguments as one process."""
    base = ["-m", "pytest", "-q", "-p", "benchmarks.gpu_check_pytest", "-p", "no:cacheprovider"]
    if pytest_args is not None:
        return [base + pytest_args]
    files = sorted((ROOT / "tests").glob("test_*.py"), key=lambda p: -p.stat().st_size)
    groups: list[list[Path]] = [[] for _ in range(max(1, min(shards, len(files))))]
    sizes = [0] * len(groups)
    for f in files:
        i = sizes.index(min(sizes))
        groups[i].append(f)
        sizes[i] += f.stat().st_size
    deselect = [a for d in DESELECT if (ROOT / d.split("::")[0]).is_file()
                for a in ("--deselect", d)]
    return [base + ["-m", "not slow", *deselect, *sorted(str(f.relative_to(ROOT)) for f in g)]
            for g in groups]


def plan(args, mode: Mode, dev: dict, info: dict, work: Path, py: str) -> dict[str, list[Check]]:
    """The checks of each phase: "tests" and "train" run side by side, then "bench" alone."""
    world, runs = work / "world", work / "runs"
    pre = world / "pretrained"
    scale = mode.scale
    methods = args.methods or info["methods"]
    unknown = sorted(set(methods) - set(info["methods"]))
    if unknown:
        raise SystemExit(f"gpu_check: --methods {' '.join(unknown)}: not registered "
                         f"({', '.join(info['methods'])})")
    cli = [py, "-m", "voice2face.cli"]
    common = [f"data.root={world}", f"run.root={runs}", "logger.wandb=false", "profile=paper",
              *mode.run]
    steps = [f"trainer.max_steps={mode.steps}", "trainer.val_check_interval=2",
             f"run.checkpoint_every={mode.steps}"]

    default_shards = max(1, min(8, (dev.get("cores") or 2) // 2)) if mode.gpu else 1
    shards = test_shards(args.pytest, args.test_shards or default_shards)
    tests = [Check(f"tests {i + 1}/{len(shards)}", [py, *a], 10_000, needs=("imports",),
                   env={"OMP_NUM_THREADS": "1"}, key=key_tests,
                   ok_codes=(0, 5))  # 5: every test of the shard deselected
             for i, a in enumerate(shards)]

    needed = {n for m in (*methods, "gan") for n in info["needs"][m]}
    for name in reversed(info["order"]):  # dependencies come before their users in order
        if name in needed:
            needed |= set(info["deps"][name])
    built = [n for n in info["order"] if n in needed]
    train = [Check("synth", [*cli, "synth", *WORLD, "--out", str(world), "--quiet"],
                   CAPS["synth"] * scale, needs=("imports",), key=key_synth)]
    for name in built:
        deps = [f"pretrained {d}" for d in info["deps"][name]]
        train.append(Check(f"pretrained {name}",
                           [*cli, "train", *info["makers"][name], *common, *steps,
                            f"run.name=pretrain-{name}", "run.evaluate=false",
                            "--export", str(pre / f"{name}.ckpt")],
                           CAPS["pretrained"] * scale, needs=("synth", *deps), key=key_train))
    for m in methods:
        train.append(Check(f"paper {m}",
                           [*cli, "train", m, *common, "trainer.precision=bf16-mixed", *steps,
                            f"run.name=paper-{m}"],
                           CAPS["paper"] * scale,
                           needs=("synth", *(f"pretrained {n}" for n in info["needs"][m])),
                           key=key_train))
    gpus = dev.get("gpus", 0)
    ddp_args = [*common, "trainer.precision=bf16-mixed", *steps, "run.name=ddp-gan"]
    if mode.gpu and gpus >= 2:
        ddp = [*cli, "train", "gan", *ddp_args, "trainer.devices=2", "trainer.strategy=ddp",
               "trainer.accelerator=gpu"]
        how = f"2 ranks on 2 of {gpus} GPUs over NCCL"
    else:
        ddp = [py, "benchmarks/gpu_check.py", "--ddp-gloo", "--", "train", "gan", *ddp_args,
               "trainer.devices=1", "trainer.num_nodes=2", "trainer.strategy=ddp_gloo"]
        how = ("2 ranks on the one GPU over gloo (one GPU: NCCL needs a device per rank)"
               if mode.gpu else "2 CPU ranks over gloo, launched as on one GPU (--allow-cpu)")
    train.append(Check("ddp gan", ddp, CAPS["ddp"] * scale,
                       needs=("synth", *(f"pretrained {n}" for n in info["needs"]["gan"])),
                       key=key_ddp, note=how))

    subset = ["--methods", *methods] if args.methods else []
    bench_cmd = [py, "benchmarks/train_step.py", "--data", str(world), "--pretrained", str(pre),
                 "--profiles", "paper", "--no-progress-bar", *mode.bench, *subset]
    bench_needs = ("synth", *(f"pretrained {n}" for n in built))
    dm_source = (ROOT / "benchmarks" / "datamodule.py").read_text()
    dm_cmd = [py, "benchmarks/datamodule.py", "--data", str(world)]
    dm_note = "workers " + " and ".join(mode.workers)
    if '"--workers"' in dm_source:
        dm_cmd += ["--workers", *mode.workers]
    else:
        dm_note = "per-worker rates (this datamodule.py takes no --workers)"
    if '"--samples"' in dm_source:
        dm_cmd += ["--samples", mode.samples]
    bench = [Check("train_step fp32", [*bench_cmd, "--precision", "32-true"],
                   CAPS["train_step"] * scale, needs=bench_needs, key=key_train_step),
             Check("train_step bf16-cl",
                   [*bench_cmd, "--precision", "bf16-mixed", "--channels-last"],
                   CAPS["train_step"] * scale, needs=bench_needs, key=key_train_step),
             Check("datamodule", dm_cmd, CAPS["datamodule"] * scale, needs=("synth",),
                   key=key_datamodule, note=dm_note)]
    return {"tests": tests, "train": train, "bench": bench}


# --- the run ------------------------------------------------------------------------------

def table(runner: Runner, extra: list[tuple[str, str, float | None, str]]) -> str:
    rows = [(c.name, c.status, c.seconds if c.status != "not run" and "not run" not in c.numbers
             else None, c.numbers) for c in runner.checks.values()]
    out = []
    for c, row in zip(runner.checks.values(), rows):
        out.append(row)
        out += [(f"  {name}", st, s, k) for name, st, s, k in c.rows]
    out += extra
    w = max(len(r[0]) for r in out)
    lines = [f"{'check':<{w}}  {'status':<6}  {'seconds':>7}  key numbers"]
    for name, status, seconds, numbers in out:
        sec = f"{seconds:7.1f}" if seconds is not None else f"{'-':>7}"
        lines.append(f"{name:<{w}}  {status:<6}  {sec}  {numbers}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "gpu-check-logs",
                   help="folder for the logs and summary.txt (default: gpu-check-logs/)")
    p.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels",
                   help="wheels of `make gpu-check-wheels`, installed into a temporary "
                        "folder; none there: the packages already installed are used")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for everything (default 530; 1500 with --allow-cpu)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="only these methods' paper runs and benchmark rows (default: all)")
    p.add_argument("--pytest", default=None, metavar="ARGS",
                   help='pytest arguments instead of the fast suite (-m "not slow") in shards, '
                        'e.g. "tests/test_config.py -x"')
    p.add_argument("--test-shards", type=int, default=None,
                   help="pytest processes for the fast suite (default: cores / 2, at most 8; "
                        "1 with --allow-cpu)")
    p.add_argument("--jobs", type=int, default=None,
                   help="paper runs at a time (default 3 on a GPU, 1 on the CPU)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="with no CUDA device, run the same checks tiny on the CPU")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--keep", action="store_true", help="keep the world and the runs (printed)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the world and the runs (default: a temporary folder)")
    p.add_argument("--wheel-list", action="store_true",
                   help="print the name==version of every wheel to carry, and exit")
    p.add_argument("--full", action="store_true", help="with --wheel-list: also wandb and av")
    # internal: the probes and the two-rank launch run as subprocesses of this script
    p.add_argument("--probe", choices=["device", "plan"], help=argparse.SUPPRESS)
    p.add_argument("--probe-profile", default="paper", help=argparse.SUPPRESS)
    p.add_argument("--ddp-gloo", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ddp-gloo-rank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest

    if args.wheel_list:
        print("\n".join(wheel_list(args.full)))
        return 0
    if args.probe == "device":
        print("GPU_CHECK_JSON " + json.dumps(probe_device()))
        return 0
    if args.probe == "plan":
        print("GPU_CHECK_JSON " + json.dumps(probe_plan(args.probe_profile)))
        return 0
    if args.ddp_gloo:
        return ddp_gloo_launch(rest)
    if args.ddp_gloo_rank:
        return ddp_gloo_rank(rest)
    if args.pytest is not None:
        args.pytest = shlex.split(args.pytest)
    return check_all(args)


def check_all(args) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))  # a dry run's logs; the default work
    try:
        return run_checks(args, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def run_checks(args, scratch: Path) -> int:
    py = sys.executable
    out = scratch / "logs" if args.dry_run else args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("[0-9][0-9]-*.log")) + [out / "summary.txt"]:
        old.unlink(missing_ok=True)
    wheels = args.wheels.resolve()
    site = scratch / "site"  # installed anew each run (seconds); the wheels folder stays small
    work = (args.work or scratch).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # the checkout and the wheels first, then whatever the node's Python has
    path = [str(ROOT), str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {k: v for k, v in os.environ.items() if k != "VOICE2FACE_RUN_NAME"}
    env.update(PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1", WANDB_MODE="offline",
               WANDB_SILENT="true", PIP_DISABLE_PIP_VERSION_CHECK="1")
    runner = Runner(out, env, quiet=True)  # until the device is known: a refusal is one line
    me = [py, str(Path(__file__).resolve())]

    def probed(check: Check) -> dict:
        for _, line in check.lines:
            if line.startswith("GPU_CHECK_JSON "):
                return json.loads(line[len("GPU_CHECK_JSON "):])
        return {}

    # 1. the device: refuse at once without one
    device = runner.add(Check("device", [*me, "--probe", "device"], CAPS["device"]))
    runner.run(device, time.monotonic() + CAPS["device"])
    dev = probed(device)
    if not dev:
        print(f"gpu_check: torch does not import with {py}: {last_error(device.text)}"
              + ("" if args.dry_run else f" (log: {device.log})"), file=sys.stderr)
        return 2
    if not dev["cuda"] and not (args.allow_cpu or args.dry_run):
        smi = shutil.which("nvidia-smi")
        seen = (subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip()
                .splitlines() or ["no GPU listed"])[0] if smi else "not installed"
        print(f"no CUDA device: torch {dev['torch']} (CUDA build {dev['cuda_build']}) sees none, "
              f"nvidia-smi: {seen}; run on a GPU node, or pass --allow-cpu to run the checks "
              f"tiny on the CPU", file=sys.stderr)
        return 2
    runner.quiet = False
    # a dry run without --allow-cpu plans for a GPU node, wherever it runs
    mode = mode_for(bool(dev["cuda"]) or (args.dry_run and not args.allow_cpu), args.jobs)
    budget = args.budget or (530.0 if mode.gpu else 1500.0)
    end = runner.start + budget
    device.numbers = (f"{len(dev['names'])}x {dev['names'][0]} ({dev['memory_gib']} GiB), bf16 "
                      f"{'yes' if dev['bf16'] else 'NO'}" if dev["cuda"] else
                      "no CUDA device" + (": --allow-cpu" if args.allow_cpu else ""))
    device.numbers += (f"; torch {dev['torch']} (CUDA {dev['cuda_build']}), "
                       f"Python {dev['python']}, {dev['cores']} cores")

    # 2. the wheels
    found = sorted(wheels.glob("*.whl"))
    tags = sorted({m[1] for w in found if (m := re.search(r"-cp(3\d+)-", w.name))})
    here = f"{sys.version_info[0]}{sys.version_info[1]}"
    if not found:
        install = Check("wheels", [py, "-c", "print('no wheels: the installed packages are used')"],
                        CAPS["wheels"], note=f"none in {wheels}: the installed packages are used")
    elif tags and tags != [here]:
        wrong = f"the wheels are for CPython {'/'.join(tags)}, this is {here}"
        install = Check("wheels", [py, "-c", f"raise SystemExit({wrong!r})"], CAPS["wheels"])
    else:
        mib = sum(w.stat().st_size for w in found) / 2**20
        install = Check("wheels", [py, "-m", "pip", "install", "--no-index", "--no-deps",
                                   "--target", str(site), *map(str, found)], CAPS["wheels"],
                        note=f"{len(found)} wheels ({mib:.0f} MiB) from {wheels}")
    runner.add(install)
    runner.run(install, end)

    # 3. what imports, and the plan
    imports = runner.add(Check("imports", [*me, "--probe", "plan", "--probe-profile", "paper"],
                               CAPS["imports"], needs=("wheels",)))
    runner.run(imports, end)
    info = probed(imports)
    if not info:
        print(table(runner, []))
        print(f"gpu_check: the imports failed, nothing else can run: {imports.log}",
              file=sys.stderr)
        return 2
    stack = ", ".join(f"{d} {v}" + ("" if v and v.split("+")[0] == info["locked"][d]
                                   else f" (lock {info['locked'][d]})")
                      for d, v in info["versions"].items())
    imports.numbers = (f"{len(info['methods'])} methods; {stack}"
                       + (f"; absent: {', '.join(info['absent'])} (their tests skipped)"
                          if info["absent"] else ""))
    phases = plan(args, mode, dev, info, work, py)
    for checks in phases.values():
        for c in checks:
            runner.add(c)

    if args.dry_run:
        where = ("CPU, --allow-cpu" if not mode.gpu else
                 f"{dev['gpus']} GPU(s)" if dev["cuda"] else "a GPU node; no CUDA device here")
        print(f"plan ({where}), budget {budget:.0f} s, logs in {args.out}:")
        for phase, checks in phases.items():
            print(f"\n{phase}: " + {"tests": "beside train", "train": "beside tests",
                                     "bench": "alone, after both"}[phase])
            for c in checks:
                print(f"  {c.name}  (cap {c.cap:.0f} s{'; ' + c.note if c.note else ''})\n"
                      f"    $ {shlex.join(c.cmd)}")
        return 0

    phase2 = sum(c.cap for c in phases["bench"])
    mid = end - phase2  # the benchmarks' time is kept for them
    runner.say(f"{'GPU' if mode.gpu else 'CPU (--allow-cpu)'}; budget {budget:.0f} s; "
               f"logs in {out}; world and runs in {work}")

    def train_lane():
        checks = phases["train"]
        paper = [c for c in checks if c.name.startswith("paper ")]
        for c in checks:
            if c in paper or c.name == "ddp gan":
                continue
            runner.run(c, mid)
        with ThreadPoolExecutor(mode.jobs) as pool:
            list(pool.map(lambda c: runner.run(c, mid), paper))
        runner.run(runner.checks["ddp gan"], mid)

    pool = ThreadPoolExecutor(1 + len(phases["tests"]))
    try:
        futures = [pool.submit(train_lane)]
        futures += [pool.submit(runner.run, c, mid) for c in phases["tests"]]
        for f in futures:
            f.result()
        for c in phases["bench"]:
            runner.run(c, end)
    except KeyboardInterrupt:
        # the checks run in their own sessions, so Ctrl-C reached this process only
        runner.stop()
        print("gpu_check: interrupted; the checks so far:", file=sys.stderr)
    finally:
        pool.shutdown(wait=True)

    checks = list(runner.checks.values())
    failed = [c for c in checks if c.status != "ok"]
    total = ("total", "FAILED" if failed else "ok", runner.elapsed(),
             (f"{len(failed)} of {len(checks)} checks failed" if failed else
              f"{len(checks)} checks") + f"; logs in {out}"
             + (f"; world and runs kept in {work}" if args.keep or args.work else ""))
    summary = table(runner, [total])
    (out / "summary.txt").write_text(summary + "\n")
    print("\n" + summary, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
