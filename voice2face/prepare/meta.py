"""VoxCeleb and VGGFace meta files, name matching and the identity split.

Identities are matched by name, as Wen et al. (NeurIPS 2019, "Face Reconstruction from Voice
using Generative Adversarial Networks") matched VoxCeleb1 with VGGFace: ``vox1_meta.csv``
maps each VoxCeleb1 ID to its VGGFace1 ID, which is the celebrity's name with underscores
for spaces (``A.J._Buckley``), and the face folders are named the same way. VoxCeleb2's
meta maps its IDs to VGGFace2 class IDs (``n000012``), whose names are in VGGFace2's
``identity_meta.csv``.

Names are compared through :func:`name_key`, which forgives the differences that appear
when a tree is rebuilt by hand: underscores or spaces, accents, apostrophe styles, case.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from voice2face.splits import fold

from .report import PrepareError

VOX1_HEADER = ("VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set")
VOX2_HEADER = ("VoxCeleb2 ID", "VGGFace2 ID", "Gender", "Set")
VGGFACE2_HEADER = ("Class_ID", "Name", "Sample_Num", "Flag", "Gender")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Speaker:
    """One row of a VoxCeleb meta file."""

    id: str            # VoxCeleb ID: id10001 (VoxCeleb1), id00012 (VoxCeleb2)
    name: str          # display name: underscores replaced by spaces
    gender: str        # "m" / "f"
    nationality: str   # "" for VoxCeleb2, whose meta has none
    set: str           # the dataset's own dev/test set (speaker verification), kept for reference


# --- names -----------------------------------------------------------------------------------

_APOSTROPHES = "'’‘`´ʼ′"


def display_name(raw: str) -> str:
    """``A.J._Buckley`` -> ``A.J. Buckley``: the meta and folder spelling, as people write it."""
    name = unicodedata.normalize("NFC", raw.replace("_", " "))
    return " ".join(name.split())


def name_key(name: str) -> str:
    """The form names are matched in: accents folded, case folded, only letters and digits.

    Dropping everything but letters and digits makes ``O'Brien``, ``O’Brien`` and ``OBrien``
    one person, as well as ``Jean-Luc``/``Jean Luc`` and ``A.J._Buckley``/``A. J. Buckley``.
    Two different people whose names differ only in punctuation would collide; prepare
    reports such collisions instead of merging them silently.
    """
    folded = fold(unicodedata.normalize("NFC", name)).casefold()
    return "".join(c for c in folded if c.isalnum())


def sort_key(name: str) -> tuple[str, str]:
    """Identity table order: by folded name, like the synthetic world's table."""
    return fold(name).casefold(), name


# --- meta files ------------------------------------------------------------------------------

def _read_lines(path: Path, what: str, flag: str) -> list[str]:
    if not path.is_file():
        raise PrepareError(f"{what} {path} does not exist (pass it with {flag})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PrepareError(f"{what} {path} is not UTF-8 text ({e})") from e
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise PrepareError(f"{what} {path} is empty: expected a header line and one row per speaker")
    return lines


def _check_header(path: Path, what: str, found: list[str], expected: tuple[str, ...],
                  sep_name: str) -> None:
    if tuple(found) != expected:
        raise PrepareError(
            f"{path} is not a {what}: expected the {sep_name} header "
            f"{' | '.join(expected)}, found {' | '.join(found) or 'nothing'}")


def _gender(path: Path, number: int, value: str) -> str:
    g = value.strip().lower()
    if g not in ("m", "f"):
        raise PrepareError(f"{path}, line {number}: gender {value!r} is not 'm' or 'f'")
    return g


def read_vox1_meta(path: str | Path) -> dict[str, Speaker]:
    """``vox1_meta.csv``: tab-separated VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set."""
    path = Path(path)
    lines = _read_lines(path, "VoxCeleb1 meta file", "--vox1-meta")
    header = [f.strip() for f in lines[0].split("\t")]
    while header and not header[-1]:
        header.pop()
    _check_header(path, "VoxCeleb1 meta file", header, VOX1_HEADER, "tab-separated")
    speakers: dict[str, Speaker] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        while len(fields) > len(VOX1_HEADER) and not fields[-1]:
            fields.pop()  # trailing tabs
        if len(fields) != len(VOX1_HEADER) or not fields[0] or not fields[1]:
            raise PrepareError(f"{path}, line {number}: expected {len(VOX1_HEADER)} tab-separated "
                               f"fields ({', '.join(VOX1_HEADER)}), found {line!r}")
        sid, vgg, gender, nationality, set_ = fields
        if sid in speakers:
            raise PrepareError(f"{path}, line {number}: VoxCeleb1 ID {sid} appears twice")
        speakers[sid] = Speaker(sid, display_name(vgg), _gender(path, number, gender),
                                nationality, set_)
    return speakers


def read_vox2_meta(path: str | Path) -> dict[str, tuple[str, str, str]]:
    """``vox2_meta.csv``: VoxCeleb2 ID, VGGFace2 ID, Gender, Set -> ``{id: (vggface2 id, gender, set)}``.

    The file separates its fields with `` ,`` (a space before each comma); both that and
    plain commas are read.
    """
    path = Path(path)
    lines = _read_lines(path, "VoxCeleb2 meta file", "--vox2-meta")
    header = [f.strip() for f in lines[0].split(",")]
    _check_header(path, "VoxCeleb2 meta file", header, VOX2_HEADER, "comma-separated")
    rows: dict[str, tuple[str, str, str]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(VOX2_HEADER) or not fields[0] or not fields[1]:
            raise PrepareError(f"{path}, line {number}: expected {len(VOX2_HEADER)} comma-separated "
                               f"fields ({', '.join(VOX2_HEADER)}), found {line!r}")
        sid, vgg2, gender, set_ = fields
        rows[sid] = (vgg2, _gender(path, number, gender), set_)
    return rows


def read_vggface2_names(path: str | Path) -> dict[str, str]:
    """VGGFace2's ``identity_meta.csv``: Class_ID, "Name", Sample_Num, Flag, Gender -> ``{class id: name}``.

    A few names in the published file contain unquoted commas; everything between the class
    ID and the last three fields is taken as the name.
    """
    path = Path(path)
    lines = _read_lines(path, "VGGFace2 identity meta file", "--vggface2-meta")
    rows = list(csv.reader(lines, skipinitialspace=True))
    header = [f.strip() for f in rows[0] if f.strip()]
    _check_header(path, "VGGFace2 identity meta file", header, VGGFACE2_HEADER, "comma-separated")
    names: dict[str, str] = {}
    for number, row in enumerate(rows[1:], start=2):
        row = [f.strip() for f in row]
        while row and not row[-1]:
            row.pop()
        if not row:
            continue
        if len(row) < len(VGGFACE2_HEADER):
            raise PrepareError(f"{path}, line {number}: expected {len(VGGFACE2_HEADER)} comma-separated "
                               f"fields ({', '.join(VGGFACE2_HEADER)}), found {lines[number - 1]!r}")
        names[row[0]] = display_name(", ".join(row[1:-3]).strip().strip('"'))
    return names


_SPLIT_LINE = re.compile(r"^(?P<who>.*?)[\s,]+(?P<split>\w+)\s*$")


def read_split_file(path: str | Path) -> dict[str, str]:
    """A split override: one identity a line, ``<name or VoxCeleb1 ID> <train|val|test>``.

    The name may contain spaces (the split is the last word); ``#`` starts a comment. Returns
    ``{name_key or VoxCeleb ID: split}``; identities the file does not list are left out.
    """
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"split file {path} does not exist")
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = _SPLIT_LINE.match(line)
        if m is None or m["split"] not in SPLITS or not m["who"].strip():
            raise PrepareError(f"{path}, line {number}: expected '<name or VoxCeleb1 ID> "
                               f"<{'|'.join(SPLITS)}>', found {line!r}")
        who = m["who"].strip()
        out[who if re.fullmatch(r"id\d+", who) else name_key(display_name(who))] = m["split"]
    return out
