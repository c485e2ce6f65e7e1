"""The identity split rule, shared by the synthetic world and ``prepare``.

Nagrani et al. (2018) and Wen et al. (2019) split VoxCeleb1 ∩ VGGFace by the first letter of
the name: A–B validation, C–E test, F–Z training. The letter is the first alphabetic
character with accents removed (``Åsa`` -> A; the rare name that starts with a digit,
``14th Dalai Lama``, goes by its first letter, T).
"""

from __future__ import annotations

import unicodedata

SPLIT_LETTERS = {"val": "AB", "test": "CDE", "train": "FGHIJKLMNOPQRSTUVWXYZ"}

# Letters that Unicode does not decompose into an ASCII base letter.
_FOLD = str.maketrans({"Ø": "O", "ø": "o", "Æ": "AE", "æ": "ae", "Ð": "D", "ð": "d",
                       "Þ": "TH", "þ": "th", "Ł": "L", "ł": "l", "ß": "ss"})


def fold(name: str) -> str:
    """ASCII form of a name, for sorting and the split rule: "Øystein" -> "Oystein"."""
    decomposed = unicodedata.normalize("NFKD", name.translate(_FOLD))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def initial(name: str) -> str:
    """The letter the split rule looks at: the first letter of the name, accents removed."""
    for c in fold(name):
        if c.isalpha():
            return c.upper()
    raise ValueError(f"name {name!r} has no letter")


def split_of_name(name: str) -> str:
    """The split of an identity by its name: first letter A–B val, C–E test, F–Z train."""
    letter = initial(name)
    for split, letters in SPLIT_LETTERS.items():
        if letter in letters:
            return split
    raise ValueError(f"name {name!r} starts with {letter!r}, not a letter A–Z")
