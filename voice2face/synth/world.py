"""The synthetic world's identities: hidden attributes, names, splits and random streams.

Generative model (what makes the voice–face correlation, and what bounds it):

* Shared attributes ``z = (gender, age, size)`` cause both modalities. ``gender`` is +1 for
  male and -1 for female; ``age`` is standardised, ``(years - 45) / 13``; ``size`` is a
  body/head size factor, standard normal within a gender.
* The voice does not see ``z`` itself but an *observed* copy
  ``o = z + sigma * eps``, ``eps ~ N(0, I)``, drawn once per identity (the identity-level
  voice offset: low-voiced women, young-sounding old men). Every identity-level voice
  parameter that depends on the shared attributes is a fixed invertible function of ``o``
  (pitch, vocal-tract length, tremor and other voice quality; see :func:`voice_traits`
  and docs/data.md for the sizes of the effects); the rest of the
  voice (speaking rate, breathiness, pitch range, articulation) is drawn independently.
  So ``p(voice | face) = N(o; z, diag(sigma^2))`` exactly, which is what makes the Bayes
  ceiling computable (``ceiling.py``).
* The face is drawn from ``z`` itself (geometry, hair, wrinkles) plus private attributes
  (skin and hair colour, eyes, mouth, ...), so a face reveals its shared attributes.

``sigma`` (``WorldConfig.voice_noise``) is calibrated so that the default world's ceilings
sit near what the best published systems reach on VoxCeleb 1:2 matching (about 0.87
unstratified, 0.78 with same-gender imposters): with ``sigma_size = 1.3 sigma_age``,
``sigma_age`` solves "expected same-gender ceiling = 0.78" over the population, then
``sigma_gender`` solves "unstratified = 0.87". A 189-identity test split lands within about
0.005 of both (seeds 0–3: 0.865–0.870 and 0.770–0.780).

Every random draw comes from a generator keyed by ``(seed, stream, identity, item)``
(:func:`rng_for`), so a world is the same whatever order or process renders its parts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Iterator

import numpy as np

from voice2face.constants import SAMPLE_RATE
from voice2face.splits import SPLIT_LETTERS, fold, initial, split_of_name

from .names import NAMES, NATIONALITIES

# VoxCeleb1 ∩ VGGFace identities per split (Nagrani et al. 2018; Wen et al. 2019).
SPLIT_PROPORTIONS = {"train": 924, "val": 112, "test": 189}

AGE_MEAN, AGE_SD, AGE_RANGE = 45.0, 13.0, (18.0, 85.0)
SIZE_LIMIT = 2.5

# random streams of rng_for()
TABLE, IDENTITY, UTTERANCE, FACE, SAMPLE_FACES, ORDER, CEILING = range(7)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world; stored as the manifest's ``source``."""

    preset: str = "default"
    seed: int = 0
    identities: int = 1225
    utterances: int = 10           # per identity, in its own split
    known: int = 5                 # extra held-out utterances per training identity
    faces: int = 5                 # face images per identity
    faces_per_sample: int = 2
    face_size: int = 64
    sample_rate: int = SAMPLE_RATE
    seconds: tuple[float, float] = (2.0, 4.0)
    snr_db: tuple[float, float] = (20.0, 40.0)
    p_male: float = 0.55           # VoxCeleb1 is 55% male
    # sigma of o = z + sigma * eps for (gender, age, size); calibrated, see module docstring
    voice_noise: tuple[float, float, float] = (0.64, 0.90, 1.17)
    ceiling_trials: int = 200_000

    def __post_init__(self):
        if self.identities < 10:
            raise ValueError("a world needs at least 10 identities (train, val and a test "
                             "split with two of each gender)")
        if self.faces < self.faces_per_sample or self.faces_per_sample < 2:
            raise ValueError("need faces >= faces_per_sample >= 2")
        if self.face_size not in (64, 128):
            raise ValueError("face_size must be 64 or 128")
        if self.utterances < 1 or self.known < 0:
            raise ValueError("need utterances >= 1 and known >= 0")
        if not 0 < self.seconds[0] <= self.seconds[1]:
            raise ValueError("seconds must be (min, max) with 0 < min <= max")

    def to_dict(self) -> dict:
        """The config as JSON values (tuples become lists, as they come back from JSON)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


PRESETS: dict[str, WorldConfig] = {
    # seconds to generate: for tests and smoke runs
    "tiny": WorldConfig(preset="tiny", identities=40, utterances=4, known=2, faces=3,
                        seconds=(1.0, 2.0), ceiling_trials=20_000),
    # Nagrani et al.'s 1,225 identities; < 3 minutes on 2 cores
    "default": WorldConfig(preset="default"),
}


def preset(name: str, **overrides) -> WorldConfig:
    """The named preset with some fields replaced (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for one part of the world, e.g. ``(seed, UTTERANCE, i, u)``."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


# --- traits ------------------------------------------------------------------------------

@dataclass(frozen=True)
class VoiceTraits:
    """Identity-level voice parameters.

    ``f0``, ``vtl`` and ``quality`` are functions of the observed shared vector only;
    ``rate``, ``breathiness``, ``pitch_range`` and ``articulation`` are private.
    """

    observed: tuple[float, float, float]   # o = z + sigma * eps
    f0: float               # mean pitch, Hz
    vtl: float              # vocal-tract length, cm (formants scale with 17 / vtl)
    quality: float          # age-like voice quality: drives jitter, shimmer, tremor
    jitter: float           # relative period perturbation per glottal cycle
    shimmer: float          # relative amplitude perturbation per glottal cycle
    tremor: float           # depth of the 4–7 Hz pitch tremor
    rate: float             # speaking rate (1 = average)
    breathiness: float      # 0..1: open quotient and aspiration noise
    pitch_range: float      # scale of intonation movements
    articulation: float     # vowel-space spread (1 = average, < 1 mumbled)


@dataclass(frozen=True)
class FaceTraits:
    """Identity-level face parameters; coordinates are fractions of the head height."""

    scale: float            # head size in the frame: grows with size
    width: float            # face width / height: grows with size, wider for men
    jaw: float              # jaw width relative to cheeks
    squareness: float       # superellipse exponent of the lower face (men squarer)
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]   # colour before greying
    grey: float             # fraction of grey in hair and brows (age)
    hair_style: str
    hairline: float         # 0 full, 1 bald crown (men, with age)
    beard: float            # 0 none, ~0.15 stubble .. 1 full (men only)
    brow: float             # brow thickness
    eye_size: float
    eye_spacing: float
    eye_colour: tuple[int, int, int]
    nose_length: float
    nose_width: float
    mouth_width: float
    lips: float             # lip thickness
    lip_colour: tuple[int, int, int]
    wrinkles: float         # 0..1, age: the contrast of wrinkles and eye bags
    glasses: bool
    ear_size: float


@dataclass(frozen=True)
class Identity:
    index: int
    name: str
    gender: str             # "m" / "f"
    nationality: str
    split: str              # train / val / test
    age: float              # years
    size: float
    voice: VoiceTraits
    face: FaceTraits

    @property
    def id(self) -> str:
        return f"id{self.index:05d}"

    @property
    def shared(self) -> np.ndarray:
        """The shared attribute vector z = (gender ±1, standardised age, size)."""
        return shared_vector(self.gender, self.age, self.size)

    def table_row(self) -> dict:
        return {"index": self.index, "name": self.name, "gender": self.gender,
                "nationality": self.nationality, "split": self.split}


def shared_vector(gender: str, age: float, size: float) -> np.ndarray:
    return np.array([1.0 if gender == "m" else -1.0, (age - AGE_MEAN) / AGE_SD, size])


def voice_traits(observed: np.ndarray, rng: np.random.Generator) -> VoiceTraits:
    """Voice parameters of an identity from its observed shared vector and private draws.

    The map from ``o`` to (log f0, log vtl, quality) is linear and invertible, so the
    voice carries exactly the information in ``o``. Means follow adult speech: about 120 Hz
    and 17 cm for men, 210 Hz and 14.5 cm for women (Peterson & Barney 1952; Fitch &
    Giedd 1999). Each attribute has a cue that one utterance can show above the
    utterance's own variation (``voice2face synth --audit`` measures it): gender moves the
    pitch by 28 % per unit, size the tract length (every formant) by 6 % per unit, age
    doubles the depth of the pitch tremor per unit (and raises jitter and shimmer). Size
    moves the pitch only a little, so that pitch and tract length do not have to be
    disentangled to tell gender from size.
    """
    g, a, s = (float(x) for x in observed)
    f0 = 160.0 * math.exp(-0.28 * g - 0.03 * a - 0.02 * s)
    vtl = 15.8 * math.exp(0.075 * g + 0.06 * s)
    quality = a
    return VoiceTraits(
        observed=(g, a, s), f0=f0, vtl=vtl, quality=quality,
        jitter=0.005 * math.exp(0.4 * quality),
        shimmer=0.06 * math.exp(0.4 * quality),
        tremor=min(0.03 * math.exp(0.7 * quality), 0.12),   # beyond 12 % it is a warble
        rate=float(np.exp(rng.normal(0.0, 0.12))),
        breathiness=float(rng.beta(2.0, 4.0)),
        pitch_range=float(np.exp(rng.normal(0.0, 0.3))),
        articulation=float(np.clip(rng.normal(1.0, 0.08), 0.75, 1.2)),
    )


# skin tone 0 (light) .. 1 (dark): Beta parameters per culture
_SKIN = {"anglo": (1.2, 3.5), "indian": (6.0, 3.5), "german": (1.2, 6.0), "french": (1.4, 4.5),
         "italian": (2.5, 5.0), "spanish": (3.0, 4.5), "nordic": (1.0, 8.0)}
_SKIN_RAMP = np.array([[248, 220, 200], [226, 180, 145], [176, 122, 86], [96, 62, 44]], float)
# hair colours and their weights per culture
_HAIR = {"black": (28, 24, 22), "dark brown": (60, 40, 28), "brown": (105, 72, 45),
         "light brown": (150, 112, 72), "blonde": (214, 180, 118), "red": (150, 62, 30)}
_HAIR_P = {"anglo": (0.15, 0.3, 0.25, 0.12, 0.13, 0.05), "indian": (0.85, 0.15, 0, 0, 0, 0),
           "german": (0.08, 0.25, 0.27, 0.2, 0.2, 0.0), "french": (0.15, 0.35, 0.3, 0.12, 0.08, 0),
           "italian": (0.35, 0.45, 0.15, 0.05, 0, 0), "spanish": (0.45, 0.4, 0.12, 0.03, 0, 0),
           "nordic": (0.03, 0.12, 0.2, 0.25, 0.38, 0.02)}
_EYES = [(60, 40, 25), (95, 65, 35), (70, 110, 60), (70, 110, 160), (110, 130, 140)]
HAIR_STYLES = {"m": ("crop", "side", "buzz", "curly", "long"),
               "f": ("long", "bob", "bun", "curly", "side")}
_STYLE_P = {"m": (0.35, 0.3, 0.15, 0.12, 0.08), "f": (0.45, 0.2, 0.12, 0.13, 0.1)}


def _skin_colour(tone: float, rng: np.random.Generator) -> tuple[int, int, int]:
    x = tone * (len(_SKIN_RAMP) - 1)
    k = min(int(x), len(_SKIN_RAMP) - 2)
    rgb = _SKIN_RAMP[k] + (x - k) * (_SKIN_RAMP[k + 1] - _SKIN_RAMP[k])
    rgb = rgb * (1 + np.array([0.04, -0.01, -0.03]) * rng.normal())  # undertone
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def face_traits(gender: str, age: float, size: float, culture: str,
                rng: np.random.Generator) -> FaceTraits:
    """Face parameters: geometry from gender and size, age cues from age, the rest private.

    What the face shows of ``z`` is large against what changes from photo to photo
    (``faces.render_face``: scale within 3 %, roll, shift, light): one unit of size makes
    the head 7 % taller and its width-to-height ratio 0.07 larger (about 10 %); age is the
    wrinkles' contrast and the hair's greying, each linear in years over the
    whole range, plus a receding hairline (men), smaller eyes and thinner lips.
    """
    m = gender == "m"
    a = (age - AGE_MEAN) / AGE_SD
    t = (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])   # 0 youngest .. 1 oldest
    style = str(rng.choice(HAIR_STYLES[gender], p=_STYLE_P[gender]))
    hair = _HAIR[str(rng.choice(list(_HAIR), p=_HAIR_P[culture]))]
    hair = tuple(int(np.clip(c * rng.uniform(0.85, 1.15), 0, 255)) for c in hair)
    return FaceTraits(
        scale=1.0 + 0.07 * size,                               # exact: the head shows its size
        width=0.74 + (0.03 if m else -0.03) + 0.07 * size,     # exact: and so does its shape
        jaw=(0.86 if m else 0.74) + 0.04 * size + 0.02 * a + rng.normal(0, 0.02),
        squareness=(2.9 if m else 2.2) + 0.15 * size + rng.normal(0, 0.1),
        skin=_skin_colour(float(rng.beta(*_SKIN[culture])), rng),
        hair=hair,
        grey=float(np.clip(0.05 + 0.9 * t + rng.uniform(-0.05, 0.05), 0, 1)),  # linear
        hair_style=style,
        hairline=float(np.clip((t * rng.uniform(0.3, 1.3)) if m else 0.0, 0, 1)),
        # every man's lower face is darker: a beard (30 %) or stubble
        beard=float(rng.uniform(0.3, 1.0) if rng.random() < 0.3 else rng.uniform(0.12, 0.2))
        if m else 0.0,
        brow=(0.030 if m else 0.017) * rng.uniform(0.8, 1.25),
        eye_size=(0.050 if m else 0.056) * rng.uniform(0.85, 1.15) * (1 - 0.05 * a),
        eye_spacing=rng.uniform(0.17, 0.21),
        eye_colour=_EYES[int(rng.integers(len(_EYES)))],
        nose_length=(0.17 if m else 0.15) * (1 + 0.04 * a + 0.04 * size) * rng.uniform(0.9, 1.1),
        nose_width=(0.085 if m else 0.07) * (1 + 0.06 * size) * rng.uniform(0.85, 1.15),
        mouth_width=(0.20 if m else 0.19) * rng.uniform(0.85, 1.15),
        lips=(0.022 if m else 0.032) * (1 - 0.15 * a) * rng.uniform(0.8, 1.2),
        lip_colour=(178, 92, 88) if m else tuple(int(c) for c in rng.choice(
            [(196, 70, 80), (170, 80, 90), (205, 110, 110), (150, 60, 70)])),
        wrinkles=t,                                            # exact: the face shows its age
        glasses=bool(rng.random() < 0.15),
        ear_size=(0.13 if m else 0.12) * (1 + 0.05 * a) * rng.uniform(0.9, 1.1),
    )


# --- the identity table ------------------------------------------------------------------

def split_sizes(n: int) -> dict[str, int]:
    """Identities per split, in VoxCeleb∩VGGFace's proportion 924/112/189."""
    total = sum(SPLIT_PROPORTIONS.values())
    val = max(2, round(n * SPLIT_PROPORTIONS["val"] / total))
    test = max(4, round(n * SPLIT_PROPORTIONS["test"] / total))
    return {"train": n - val - test, "val": val, "test": test}


def _draw_name(rng, gender: str, split: str, taken: set[str]) -> tuple[str, str]:
    nats = list(NATIONALITIES)
    weights = np.array([NATIONALITIES[n][1] for n in nats])
    for _ in range(200):
        nat = nats[int(rng.choice(len(nats), p=weights / weights.sum()))]
        lists = NAMES[NATIONALITIES[nat][0]]
        firsts = [f for f in lists[gender] if initial(f) in SPLIT_LETTERS[split]]
        first = firsts[int(rng.integers(len(firsts)))]
        name = f"{first} {lists['last'][int(rng.integers(len(lists['last'])))]}"
        if name not in taken:
            return name, nat
    # A crowded letter range: a middle initial keeps names unique (VoxCeleb has such names).
    for _ in range(10_000):
        middle = chr(ord("A") + int(rng.integers(26)))
        candidate = name.replace(" ", f" {middle}. ", 1)
        if candidate not in taken:
            return candidate, nat
    raise RuntimeError("could not find a unique name; the name lists are too small")


def sample_identities(config: WorldConfig) -> list[Identity]:
    """The world's identity table, sorted by name like VoxCeleb's ids."""
    rng = rng_for(config.seed, TABLE)
    rows, taken = [], set()
    for split, n in split_sizes(config.identities).items():
        # Exact gender counts per split, at least two of each where there is room, so that
        # even a tiny test split has same-gender imposters.
        n_male = round(n * config.p_male)
        if n >= 4:
            n_male = min(max(n_male, 2), n - 2)
        genders = rng.permutation(["m"] * n_male + ["f"] * (n - n_male))
        for gender in genders:
            name, nat = _draw_name(rng, str(gender), split, taken)
            taken.add(name)
            rows.append((name, str(gender), nat, split))
    rows.sort(key=lambda r: (fold(r[0]).casefold(), r[0]))

    identities = []
    for index, (name, gender, nat, split) in enumerate(rows):
        assert split_of_name(name) == split
        rng = rng_for(config.seed, IDENTITY, index)
        age = _truncated(rng, AGE_MEAN, AGE_SD, *AGE_RANGE)
        size = _truncated(rng, 0.0, 1.0, -SIZE_LIMIT, SIZE_LIMIT)
        z = shared_vector(gender, age, size)
        observed = z + np.asarray(config.voice_noise) * rng.standard_normal(3)
        identities.append(Identity(
            index=index, name=name, gender=gender, nationality=nat, split=split, age=age,
            size=size, voice=voice_traits(observed, rng),
            face=face_traits(gender, age, size, NATIONALITIES[nat][0], rng)))
    return identities


def _truncated(rng, mean, sd, lo, hi) -> float:
    while True:
        x = rng.normal(mean, sd)
        if lo <= x <= hi:
            return float(x)


# --- what gets rendered -------------------------------------------------------------------

@dataclass(frozen=True)
class Utterance:
    identity: int
    number: int             # per identity: 0.. utterances-1 in its split, then known ones
    split: str              # train / known / val / test

    @property
    def key(self) -> str:
        return f"id{self.identity:05d}-u{self.number:04d}"

    @property
    def source_id(self) -> str:
        return f"id{self.identity:05d}/u{self.number:04d}"


def iter_utterances(identities: list[Identity], config: WorldConfig) -> Iterator[Utterance]:
    """Every utterance of the world, identity by identity; training identities' last
    ``config.known`` utterances form the ``known`` split."""
    for ident in identities:
        for u in range(config.utterances):
            yield Utterance(ident.index, u, ident.split)
        if ident.split == "train":
            for u in range(config.utterances, config.utterances + config.known):
                yield Utterance(ident.index, u, "known")


def face_key(identity: int, number: int) -> str:
    return f"id{identity:05d}-f{number:03d}"


def sample_faces(identity: Identity, utterance: int, config: WorldConfig) -> list[int]:
    """Which of the identity's face images go with one of its utterances in a sample."""
    rng = rng_for(config.seed, SAMPLE_FACES, identity.index, utterance)
    return [int(i) for i in rng.choice(config.faces, config.faces_per_sample, replace=False)]
