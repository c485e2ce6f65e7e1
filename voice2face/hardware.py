"""Which hardware a run gets: the one decision behind ``profile=auto``, asked by Python
(``voice2face.config``) and by make (``python -m voice2face.hardware`` prints the profile), so
that the profile a run resolves and the pretrained nets make builds for it never disagree.

``paper`` when torch can use a GPU, ``cpu`` when there is none. A GPU that ``nvidia-smi``
sees but torch cannot use (most often a driver older than the CUDA build torch was installed
with: the lock's torch is PyPI's CUDA 13 build, which needs driver >= 580) is neither: a GPU
job would quietly run the ``cpu`` profile on the node's CPU, so ``profile=auto`` refuses
with one line naming the driver, torch's build and the command that installs a build of
the same release that matches the driver (``profile=cpu`` runs on the CPU on purpose).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

# the CUDA 12 build of the locked release, for drivers older than CUDA 13's (>= 580)
MATCHING_BUILD = ("pip install torch=={torch} torchaudio=={torch} --index-url "
                  "https://download.pytorch.org/whl/cu126")


class UnusableGPU(RuntimeError):
    """``nvidia-smi`` sees a GPU that torch cannot use."""


@dataclass(frozen=True)
class Hardware:
    cuda: bool                 # torch can use a GPU
    driver: str | None         # the NVIDIA driver version nvidia-smi reports, if any
    torch: str                 # torch's version, e.g. 2.11.0 or 2.11.0+cu126
    torch_cuda: str | None     # the CUDA version torch was built with (None: a CPU build)

    @property
    def unusable_gpu(self) -> bool:
        return self.driver is not None and not self.cuda

    def warning(self) -> str | None:
        """One line, when a GPU is there and torch cannot use it."""
        if not self.unusable_gpu:
            return None
        build = f"built for CUDA {self.torch_cuda}" if self.torch_cuda else "a CPU-only build"
        release = self.torch.split("+")[0]
        return (f"a GPU is present (NVIDIA driver {self.driver}) but torch {self.torch} "
                f"({build}) cannot use it; install the build of the same release that matches "
                f"the driver: `.venv/bin/{MATCHING_BUILD.format(torch=release)}` (CUDA 12.x "
                f"drivers), then check with `.venv/bin/python -m voice2face.environment`")

    def profile(self) -> str:
        """The profile ``profile=auto`` resolves to; ``UnusableGPU`` rather than a quiet CPU
        run on a GPU node."""
        if self.unusable_gpu:
            raise UnusableGPU(f"{self.warning()}; or run on the CPU on purpose with profile=cpu")
        return "paper" if self.cuda else "cpu"


def nvidia_driver() -> str | None:
    """The driver version of the first GPU ``nvidia-smi`` lists; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split() if out.returncode == 0 else []
    return lines[0] if lines else None


def detect() -> Hardware:
    import torch
    return Hardware(cuda=torch.cuda.is_available(), driver=nvidia_driver(),
                    torch=torch.__version__, torch_cuda=torch.version.cuda)


def auto_profile() -> str:
    return detect().profile()


def main() -> int:
    """Print the profile ``profile=auto`` resolves to here (what make passes to its runs)."""
    try:
        print(auto_profile())
    except UnusableGPU as e:
        print(f"voice2face: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
