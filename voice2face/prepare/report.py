"""What `voice2face prepare` left out, and why: the skip reasons and ``prepare_report.json``.

A bad input never stops a run (issue 5): the file or identity is skipped and recorded here
with its path and one of the fixed reasons below, so the report can be grepped and the
printed summary counts skips by reason. Only missing inputs and malformed meta files stop a
run, with a :class:`PrepareError` naming the file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable

from voice2face.errors import UserError

# files
UNREADABLE_AUDIO = "unreadable audio"
EMPTY_AUDIO = "empty audio"
NO_SPEECH = "no speech after VAD"
TOO_SHORT = "too short after VAD"
UNDECODABLE_IMAGE = "undecodable image"
# identities
VOICES_NO_FACES = "identity with voices but no faces"
FACES_NO_VOICES = "identity with faces but no voices"
TOO_FEW_FACES = "identity with too few usable faces"
NOT_IN_META = "audio folder not in the meta file"
DUPLICATE_NAME = "name of several meta rows"
NO_LETTER = "name without a letter for the split rule"
NOT_IN_SPLIT_FILE = "identity not in the split file"
VOX2_UNMATCHED = "VoxCeleb2 speaker not among the VoxCeleb1 ∩ faces identities"
VOX2_NO_NAME = "VoxCeleb2 speaker's VGGFace2 ID has no name in identity_meta.csv"


class PrepareError(UserError):
    """An input that stops the run: a missing folder or meta file, a meta file of the wrong format."""


class Skip(Exception):
    """Raised by the per-file steps: this file is left out for ``reason`` (one of the above)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.detail:
            del d["detail"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Skipped":
        return cls(d["path"], d["reason"], d.get("detail", ""))


def summary(skipped: Iterable[Skipped]) -> dict[str, int]:
    """Skips counted by reason, most frequent first."""
    return dict(Counter(s.reason for s in skipped).most_common())


def format_summary(report: dict) -> str:
    """The lines printed at the end of a run."""
    lines = [f"identities: {report['identities']['total']} "
             f"({', '.join(f'{k} {v}' for k, v in report['identities']['per_split'].items())})",
             "samples:    " + ", ".join(f"{k} {v}" for k, v in report["samples"].items()),
             "gallery:    " + ", ".join(f"{k} {v}" for k, v in report["gallery"].items())]
    if report["summary"]:
        lines.append(f"skipped ({sum(report['summary'].values())}, "
                     f"listed in {report['path']}):")
        width = max(len(r) for r in report["summary"])
        lines += [f"  {reason:<{width}}  {n}" for reason, n in report["summary"].items()]
    else:
        lines.append("skipped: nothing")
    return "\n".join(lines)
