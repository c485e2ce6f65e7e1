"""``python -m voice2face.sweep <method> [--count N]`` (``make sweep METHOD=...``): create the W&B
sweep of ``experiments/sweeps/<method>.yaml`` and run an agent on it.

A sweep needs the W&B server (the agent gets its parameter sets from it and reports the
metric to it), so an API key is required: ``WANDB_API_KEY`` or the ``~/.netrc`` entry that
``wandb login`` writes. Without one this says what is missing and exits 2, before any
network access. The agent runs each trial as the sweep file's ``command``:
``voice2face train <method> logger.mode=online run.evaluate=false key=value ...``.
"""

from __future__ import annotations

import argparse
import netrc
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

from voice2face.config import ConfigError, experiments_dir, load_config
from voice2face.errors import report


def sweeps_dir() -> Path:
    return experiments_dir() / "sweeps"


def sweep_file(method: str) -> Path:
    path = sweeps_dir() / f"{method}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in sweeps_dir().glob("*.yaml"))
        raise ConfigError(f"no sweep file {path}; sweeps exist for: {', '.join(have)}")
    return path


def load_sweep(path: Path) -> dict:
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read sweep file ({e})") from e
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return sweep


def wandb_missing(env=os.environ) -> str | None:
    """What keeps a sweep from running here, or None: an API key in the environment or in
    the netrc file for the W&B host, and a mode that reaches the server."""
    mode = env.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}: a sweep needs the W&B server; unset it"
    if env.get("WANDB_API_KEY"):
        return None
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = env.get("NETRC") or str(Path(env.get("HOME", "~")).expanduser() / ".netrc")
    try:
        if netrc.netrc(path).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return (f"no W&B API key: set WANDB_API_KEY, or run `.venv/bin/wandb login` (it writes "
            f"{path} for {host}); for a W&B server of your own also set WANDB_BASE_URL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voice2face.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method")
    parser.add_argument("--count", type=int, default=None, help="trials for this agent (default: "
                        "until the sweep ends)")
    parser.add_argument("--sweep-id", default=None, help="join an existing sweep instead of "
                        "creating one (another agent, e.g. on a second machine)")
    parser.add_argument("--data", default=None, help="data.root of every trial (added to the "
                        "sweep's parameters as a constant)")
    parser.add_argument("--check", action="store_true", help="only check the sweep file and "
                        "the W&B set-up")
    args = parser.parse_args(argv)

    def run() -> int:
        path = sweep_file(args.method)
        sweep = load_sweep(path)
        missing = wandb_missing()
        if missing:
            print(f"make sweep: {missing}. Sweep file: {path}", file=sys.stderr)
            return 2
        if args.check:
            return 0
        if args.data:
            sweep["parameters"]["data.root"] = {"value": str(Path(args.data).resolve())}
        cfg = load_config(args.method, ["profile=cpu"])  # project and entity of the runs
        import wandb
        sweep_id = args.sweep_id or wandb.sweep(sweep, project=cfg.logger.project,
                                                entity=cfg.logger.entity)
        # the agent runs `voice2face` from the sweep's command: this environment's
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        agent = [shutil.which("wandb", path=bin_dir) or "wandb", "agent",
                 "--project", cfg.logger.project]
        if cfg.logger.entity:
            agent += ["--entity", cfg.logger.entity]
        if args.count:
            agent += ["--count", str(args.count)]
        print(f"voice2face: sweep {sweep_id} ({path}); agent: {' '.join(agent)} {sweep_id}")
        return subprocess.call([*agent, sweep_id], env=env)

    return report("make sweep", run)


if __name__ == "__main__":
    sys.exit(main())
