"""Reference probes and the attribute instrument (issue 26): what a generator that knew what
the voice reveals would score, measured exactly as ``evaluate`` measures a method's faces.

A set of probes is one face embedding per test utterance, with its speaker; the gallery is
every single test gallery image. Two instruments score it:

* **the judge's embedding**: exhaustive 1:2 matching by cosine, unstratified and with
  same-gender imposters, by the metric objects of ``voice2face.metrics.make_metrics``
  (``judge_matching``);
* **the judge's attribute read-outs**: a ridge regression from the judge embedding of one
  face to the attributes (``fit_readout``; on a synthetic world z = (gender, age, size)),
  fitted on the training gallery. Nothing trains the judge or its read-outs: they are the
  instrument. A probe's read-out is matched against the read-outs of the gallery images by
  the world's Bayes rule (``voice_distance`` in sigma units: ``attribute_matching``) and
  compared with its speaker's attributes (``attribute_agreement``), as Speech2Face compares
  the attributes that a classifier reads from the reconstructed and from the true face
  (Oh et al., CVPR 2019, Fig. 4, the facial attribute evaluation). The speaker's attributes
  are an input: the true z on a synthetic world, the read-out of the speaker's real faces
  on real data (``speaker_targets``).

The reference probes are built from the training faces, each with its identity's attribute
vector z as a sample of the prior:

* ``likelihood_faces``: the **o-oracle**, the face of the attributes o that the voice
  observed (``world.py``: o = z + sigma * eps), E[emb | z = o] under a linear model of the
  training faces. The 1:2 decision that maximises accuracy picks the face whose z makes o
  likeliest, ``voice_distance(o, z)`` (``ceiling.py``); a probe whose read-out is o makes
  exactly that decision in attribute space, so with exact read-outs it reaches the world's
  ceiling (``tests/test_bounds.py``).
* ``posterior_faces``: the posterior-mean face E[emb | o], the squared-error optimum. It
  shrinks toward the prior's mean, which changes the decisions: with exact read-outs on the
  default world's test split it scores about 0.848 / 0.743 against the ceiling's 0.870 /
  0.780 (unstratified / same gender), so it is a comparison row, not the bound. Through the
  default world's cpu-profile judge it is 0.709 / 0.572 by the judge's embedding and
  0.735 / 0.607 in attribute space, the face of o 0.702 / 0.592 and 0.738 / 0.632.
* with o estimated from a voice embedding and the estimate calibrated on held-out voices
  (``Calibration``), the same faces give the **voice-embedder oracle**.
* ``gender_faces``: the **gender-only control**, a generator that knows gender and nothing
  else; it scores chance on same-gender matching.
* ``with_private_traits``: the face of o with the **private traits** of a random real face
  (its residual from the linear face model), what a generator that sets the attributes
  from the voice and draws the rest at random would show: near the o-oracle in matching,
  near real faces in distribution.
* ``posterior_sample_faces``: a **posterior sample**, one real training face drawn from
  p(face | o), what a generator that sampled faces (private traits included) instead of
  drawing the face of o would show. Its faces are real photos, so their distribution is the
  real faces' (``frechet``); the private traits it draws cost it matching accuracy.

Besides matching, a row has the **Fréchet distance** of its probes to the real test faces
(``frechet``), measured as ``evaluate`` measures a method's faces: against the reference
half of the test gallery, in the judge's space. A face's judge embedding has unit length,
so the probes are normalised first: the face a generator would draw for a mean embedding
is the one in its direction. It says how far from real faces the face that matches best
is: a generator that draws the face of o is scored against that distance, not against
real-vs-real.

The probes are mean embeddings, not normalised: cosine matching normalises them itself, and
the read-outs are linear, so the read-out of a mean embedding is the mean read-out of the
faces it averages, what single drawn faces read on average. Normalised, an average (whose
private traits cancel) reads as a caricature: on the default world its read-outs grow
about twice as steep in o as real faces' (measured through the default world's cpu-profile
judge: the o-oracle's agreement R² of age -0.73 instead of 0.42).

Everything here is a function of arrays: no data is loaded, and the posterior samples are
the only draws, from a generator seeded by the caller.
``voice2face.evaluation.instrument`` makes the passes over the data and assembles the rows
into the instrument table that ``voice2face results`` and ``benchmarks/instrument.py`` print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from voice2face.metrics import FeatureFrechetDistance, make_metrics
from voice2face.synth.audit import ATTRIBUTES, LinearProbe, r_squared
from voice2face.synth.ceiling import voice_distance

# The read-outs' ridge, on standardised judge embeddings (LinearProbe): some thousands of
# training faces against a 64-d embedding need little shrinkage.
READOUT_RIDGE = 1e-2


def identity_means(emb: np.ndarray, identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(identities ascending, [J, D] mean of each identity's rows of emb)``."""
    ids, slot = np.unique(np.asarray(identity), return_inverse=True)
    sums = np.zeros((len(ids), emb.shape[1]))
    np.add.at(sums, slot, np.asarray(emb, float))
    return ids, sums / np.bincount(slot)[:, None]


# --- reference probes ------------------------------------------------------------------------

def likelihood_faces(o: np.ndarray, prior_z: np.ndarray, prior_emb: np.ndarray) -> np.ndarray:
    """``[N, D]``: the mean face of the attributes ``o``, E[emb | z = o] under a linear
    model of the prior's faces, ``emb = a + z B`` fitted by least squares on the training
    faces ``prior_emb`` and their identities' ``prior_z``, evaluated at ``o``.

    Linear because o leaves the prior's support: its gender coordinate is continuous (a
    voice between the registers makes a face between the genders, which is what the Bayes
    rule weighs against age and size), and o reaches past the prior's extremes."""
    return _design(o) @ linear_face_model(prior_z, prior_emb)


def _design(z) -> np.ndarray:
    return np.c_[np.ones(len(z)), np.asarray(z, float)]


def linear_face_model(prior_z: np.ndarray, prior_emb: np.ndarray) -> np.ndarray:
    """``[1 + K, D]``: the least-squares fit of ``emb = a + z B`` to the prior's faces,
    ``a`` in its first row."""
    return np.linalg.lstsq(_design(prior_z), np.asarray(prior_emb, float), rcond=None)[0]


def private_traits(prior_z: np.ndarray, prior_emb: np.ndarray) -> np.ndarray:
    """``[J, D]``: what of each prior face its attributes do not explain, its residual from
    ``linear_face_model``: private traits and the photo's nuisance."""
    return np.asarray(prior_emb, float) - _design(prior_z) @ linear_face_model(prior_z, prior_emb)


def with_private_traits(faces: np.ndarray, prior_z: np.ndarray, prior_emb: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """``[N, D]``: each face plus the ``private_traits`` of a prior face drawn uniformly by
    ``rng``: the face of the attributes it was made for, looking like one real person
    rather than the average of many (what a generator that sets the attributes from the
    voice and draws everything else at random would show)."""
    traits = private_traits(prior_z, prior_emb)
    return np.asarray(faces, float) + traits[rng.integers(0, len(traits), len(faces))]


def posterior_weights(o: np.ndarray, prior_z: np.ndarray, sigma) -> np.ndarray:
    """``[N, J]``: p(z_j | o) over the prior's samples, proportional to the likelihood
    N(o; z_j, diag sigma^2) of ``world.py``'s generative model, normalised over j."""
    log = -0.5 * voice_distance(np.asarray(o, float)[:, None], np.asarray(prior_z, float)[None],
                                sigma)
    w = np.exp(log - log.max(1, keepdims=True))
    return w / w.sum(1, keepdims=True)


def posterior_faces(o: np.ndarray, prior_z: np.ndarray, prior_emb: np.ndarray,
                    sigma) -> np.ndarray:
    """``[N, D]``: the posterior-mean face E[emb | o] = sum_j w_j(o) emb_j, with
    ``posterior_weights`` over the training faces (Bayes' rule under the empirical prior)."""
    return posterior_weights(o, prior_z, sigma) @ np.asarray(prior_emb, float)


@dataclass(frozen=True)
class Calibration:
    """An estimate ô of the voice's o (e.g. a ridge probe of a voice embedding) made an
    unbiased noisy observation of o, per attribute.

    A regression estimate is shrunk toward the mean: regressed on o over held-out voices,
    ô = intercept + slope * o + r with slope below 1 (about R²) and r uncorrelated with o.
    Inverted, (ô - intercept) / slope = o + r / slope: o plus noise of variance
    residual / slope^2: the classical calibration estimator, which inverts the regression of
    the measurement on the truth (Osborne 1991, "Statistical calibration: a review"). The
    likelihood of z is then N(ô_c; z, sigma^2 + residual / slope^2) (``noise``). Widening
    by the estimate's plain error without the inversion shrinks twice: through the default
    world's cpu-profile judge the posterior face of DIMNet's estimate scores 0.677 / 0.530
    that way, 0.682 / 0.540 calibrated, and the face of the calibrated estimate 0.676 /
    0.572 (unstratified / same gender)."""

    intercept: np.ndarray
    slope: np.ndarray
    residual: np.ndarray    # variance of r

    @classmethod
    def fit(cls, o_hat: np.ndarray, o: np.ndarray) -> "Calibration":
        """From estimates ``o_hat`` of held-out voices whose true ``o`` is known."""
        o_hat, o = np.asarray(o_hat, float), np.asarray(o, float)
        slope = ((o - o.mean(0)) * (o_hat - o_hat.mean(0))).mean(0) / o.var(0)
        intercept = o_hat.mean(0) - slope * o.mean(0)
        return cls(intercept, slope, (o_hat - intercept - slope * o).var(0))

    def __call__(self, o_hat: np.ndarray) -> np.ndarray:
        """The calibrated estimates of o."""
        return (np.asarray(o_hat, float) - self.intercept) / self.slope

    def noise(self, sigma) -> np.ndarray:
        """The likelihood's noise of a calibrated estimate: sqrt(sigma^2 + residual /
        slope^2), per attribute."""
        return np.sqrt(np.asarray(sigma, float) ** 2 + self.residual / self.slope ** 2)


def posterior_sample_faces(o: np.ndarray, prior_z: np.ndarray, prior_emb: np.ndarray, sigma,
                           rng: np.random.Generator, draws: int = 1) -> np.ndarray:
    """``[N, D]``: for each row of ``o``, one training face drawn with ``posterior_weights``
    (a sample of p(face | o) under the empirical prior, by inverting the weights' cumulative
    sum at a uniform draw of ``rng``); with ``draws`` > 1, the mean of that many independent
    draws, a face between a sample (1) and the posterior mean (many)."""
    cumulative = posterior_weights(o, prior_z, sigma).cumsum(1)
    u = rng.random((len(cumulative), draws)) * cumulative[:, -1:]
    drawn = np.minimum(np.stack([(cumulative <= u[:, [d]]).sum(1) for d in range(draws)], 1),
                       cumulative.shape[1] - 1)                              # [N, draws]
    return np.asarray(prior_emb, float)[drawn].mean(1)


def gender_faces(gender: np.ndarray, prior_gender: np.ndarray,
                 prior_emb: np.ndarray) -> np.ndarray:
    """``[N, D]``: for each speaker of gender ``gender[k]``, the mean of the training faces
    of that gender, what a generator that knows the gender and nothing else draws. Every
    speaker of a gender gets the same probe, so against same-gender imposters it scores
    chance."""
    gender, prior_gender = np.asarray(gender), np.asarray(prior_gender)
    emb = np.asarray(prior_emb, float)
    means = {g: emb[prior_gender == g].mean(0) for g in np.unique(gender)}
    return np.stack([means[g] for g in gender])


# --- the judge's embedding -------------------------------------------------------------------

def judge_matching(probe_emb, probe_identity, probe_gender, gallery_emb, gallery_identity,
                   gallery_gender, probe_index=None, gallery_index=None) -> dict[str, float]:
    """``{"match_1to2", "match_1to2_gender"}`` of the probes against the gallery images,
    cosine in the judge's space, by ``make_metrics``' matching metrics (exhaustive), as
    ``evaluate`` scores generated faces. Genders are the data's codes (0 f, 1 m)."""
    group = make_metrics("bound", recall_similarities=(), recall_image_gallery=False,
                         recall_block_size=None)["embedding"]
    t = torch.as_tensor
    group.update(t(np.asarray(gallery_emb), dtype=torch.float32), t(gallery_identity),
                 t(gallery_gender), None if gallery_index is None else t(gallery_index),
                 role="gallery")
    group.update(t(np.asarray(probe_emb), dtype=torch.float32), t(probe_identity),
                 t(probe_gender), None if probe_index is None else t(probe_index), role="probe")
    return {k.split("/", 1)[1]: float(v) for k, v in group.compute().items()}


def frechet(probe_emb, reference_emb) -> float:
    """Fréchet distance between the probes, normalised to unit length (a face's judge
    embedding is), and the reference faces' judge embeddings, by the metric ``evaluate``
    uses (``FeatureFrechetDistance``)."""
    reference = torch.as_tensor(np.asarray(reference_emb), dtype=torch.float32)
    metric = FeatureFrechetDistance(reference.shape[1])
    metric.update(reference, real=True)
    probes = torch.as_tensor(np.asarray(probe_emb, float))
    metric.update(torch.nn.functional.normalize(probes, dim=-1).float(), real=False)
    return float(metric.compute())


# --- the judge's attribute read-outs ---------------------------------------------------------

def fit_readout(emb: np.ndarray, attributes: np.ndarray,
                ridge: float = READOUT_RIDGE) -> LinearProbe:
    """The read-outs: ridge regression from the judge embedding of one face to its
    identity's attributes, fitted on the training gallery's single images."""
    return LinearProbe(ridge).fit(emb, attributes)


def readout_r2(readout: LinearProbe, emb: np.ndarray, attributes: np.ndarray,
               names: Sequence[str] = ATTRIBUTES) -> dict[str, float]:
    """``{"readout_r2_<attribute>"}``: R² of the read-outs of single faces (e.g. the test
    gallery's) against their identities' attributes."""
    r2 = r_squared(readout.predict(emb), np.asarray(attributes, float))
    return {f"readout_r2_{n}": float(v) for n, v in zip(names, r2)}


def speaker_targets(gallery_readout: np.ndarray, gallery_identity: np.ndarray,
                    probe_identity: np.ndarray) -> np.ndarray:
    """``[N, K]``: each probe's speaker's attributes as the read-outs see them, the mean
    read-out of the speaker's real gallery faces (the target on real data, which has no z)."""
    ids, means = identity_means(gallery_readout, gallery_identity)
    return means[np.searchsorted(ids, np.asarray(probe_identity))]


def attribute_agreement(readout: np.ndarray, target: np.ndarray,
                        names: Sequence[str] = ATTRIBUTES) -> dict[str, float]:
    """Agreement of the probes' read-outs with their speakers' attributes ``target`` (one
    row per probe): ``attribute_gender_acc``, the share whose read-out gender (its sign)
    is the speaker's, and ``attribute_r2_<name>`` for every other attribute, R² against
    the speakers' values over the probes."""
    readout, target = np.asarray(readout, float), np.asarray(target, float)
    out = {}
    for k, name in enumerate(names):
        if name == "gender":
            out["attribute_gender_acc"] = float(np.mean(
                np.sign(readout[:, k]) == np.sign(target[:, k])))
        else:
            out[f"attribute_r2_{name}"] = float(r_squared(readout[:, k], target[:, k]))
    return out


def attribute_matching(probe_readout: np.ndarray, probe_identity: np.ndarray,
                       gallery_readout: np.ndarray, gallery_identity: np.ndarray,
                       gallery_gender: np.ndarray, sigma) -> dict[str, float]:
    """``{"attribute_match_1to2", "attribute_match_1to2_gender"}``: 1:2 matching in
    attribute space through the world's Bayes rule. In a trial a probe's read-out meets one
    gallery image of its speaker and one of an imposter; the image whose read-out has the
    smaller ``voice_distance`` (squared distance in sigma units) wins, a tie counts half.

    Counted like ``CrossModalMatching``'s exhaustive mode and ``accuracy_from_distances``:
    per probe, the mean over its speaker's images, over imposter identities (each weighing
    the same, unstratified or of the speaker's gender) and over each imposter's images;
    then the mean over probes. Speakers with no same-gender imposter are left out of the
    stratified mean."""
    d = voice_distance(np.asarray(probe_readout, float)[:, None],
                       np.asarray(gallery_readout, float)[None], sigma)          # [N, G]
    return {f"attribute_{k}": v for k, v in image_matching(
        d, probe_identity, gallery_identity, gallery_gender).items()}


def image_matching(d: np.ndarray, probe_identity: np.ndarray, gallery_identity: np.ndarray,
                   gallery_gender: np.ndarray) -> dict[str, float]:
    """1:2 accuracy (``match_1to2``, ``match_1to2_gender``) when probe ``k`` has distance
    ``d[k, i]`` to gallery image ``i`` (the smaller wins), counted as
    ``attribute_matching`` says."""
    probe_identity = np.asarray(probe_identity)
    ids, slot = np.unique(np.asarray(gallery_identity), return_inverse=True)
    gender = np.asarray(gallery_gender)
    id_gender = np.zeros(len(ids), gender.dtype)
    id_gender[slot] = gender
    if np.any(id_gender[slot] != gender):
        raise ValueError("a gallery identity has images of two genders")
    missing = np.setdiff1d(probe_identity, ids)
    if len(missing):
        raise ValueError(f"probe identities {missing[:10].tolist()} have no gallery image")
    # each image's share of its identity: imposters weigh the same whatever their images
    per_identity = np.zeros((len(slot), len(ids)))
    per_identity[np.arange(len(slot)), slot] = 1.0 / np.bincount(slot)[slot]
    every, same = [], []
    for c in np.unique(np.searchsorted(ids, probe_identity)):
        dk = d[probe_identity == ids[c]]                                   # [n, G]
        true = dk[:, slot == c]                                            # [n, t]
        beaten = ((true[:, :, None] < dk[:, None]) + 0.5 * (true[:, :, None] == dk[:, None]))
        credit = beaten.mean(1) @ per_identity                             # [n, J]
        other = np.arange(len(ids)) != c
        every.append(credit[:, other].mean(1))
        partners = other & (id_gender == id_gender[c])
        if partners.any():
            same.append(credit[:, partners].mean(1))
    return {"match_1to2": float(np.concatenate(every).mean()),
            "match_1to2_gender": float(np.concatenate(same).mean()) if same else float("nan")}


# --- a row -----------------------------------------------------------------------------------

def score_probes(probe_emb, probe_identity, probe_gender, target, gallery_emb,
                 gallery_identity, gallery_gender, readout: LinearProbe, sigma,
                 names: Sequence[str] = ATTRIBUTES, probe_index=None,
                 gallery_index=None, reference_emb=None) -> dict[str, float]:
    """One row: the probes (``[N, D]`` judge embeddings, one per test utterance) through
    both instruments against the gallery's single images: ``judge_matching``,
    ``attribute_matching`` and ``attribute_agreement`` with the speakers' attributes
    ``target`` (``[N, K]``); with ``reference_emb`` (real faces' judge embeddings), also
    the probes' ``frechet`` to them."""
    probe_readout = readout.predict(probe_emb)
    row = judge_matching(probe_emb, probe_identity, probe_gender, gallery_emb,
                         gallery_identity, gallery_gender, probe_index, gallery_index)
    row.update(attribute_matching(probe_readout, probe_identity, readout.predict(gallery_emb),
                                  gallery_identity, gallery_gender, sigma))
    row.update(attribute_agreement(probe_readout, target, names))
    if reference_emb is not None:
        row["frechet"] = frechet(probe_emb, reference_emb)
    return row
