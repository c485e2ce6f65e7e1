"""The Bayes-optimal 1:2 voice-to-face matching accuracy of a synthetic world.

A 1:2 trial (Nagrani et al. 2018, "Seeing voices and hearing faces") shows a voice and two
faces, one of the speaker and one of an imposter. In this world a face reveals its shared
attributes ``z`` and a voice reveals at most the identity's observed vector
``o = z + sigma * eps`` (see ``world.py``). The decision that maximises accuracy picks the
face whose ``z`` makes ``o`` more likely, i.e. the smaller ``||(o - z) / sigma||``; any
method, however good, decides from less than ``o`` (one noisy utterance, drawn faces), so
its accuracy is at most this one.

The ceiling is the expected accuracy of that decision on the test split: the speaker drawn
uniformly from the split's identities, the imposter uniformly from the others (or from those
of the speaker's gender), and the voice's identity-level offset ``eps`` drawn afresh, so the
number describes the split's faces rather than one draw of their voices. It is estimated by
Monte Carlo; for Gaussian noise the exact value is
``mean_i mean_j Phi(||(z_i - z_j) / sigma|| / 2)``, which the tests compare it with.
"""

from __future__ import annotations

import numpy as np

from .world import CEILING, Identity, WorldConfig, rng_for


def voice_distance(o: np.ndarray, z: np.ndarray, sigma) -> np.ndarray:
    """The Bayes rule's score of a face with shared vector ``z`` for a voice with observed
    vector ``o``: ``||(o - z) / sigma||^2``, the Gaussian log-likelihood with its common
    terms cancelled. The smaller, the likelier; the rule picks the face with the smaller."""
    return (((np.asarray(o) - np.asarray(z)) / np.asarray(sigma, float)) ** 2).sum(-1)


def match_accuracy(o_hat: np.ndarray, speaker: np.ndarray, shared: np.ndarray,
                   genders: np.ndarray, sigma) -> dict:
    """1:2 accuracy of the Bayes rule for given voices: voice ``k`` with (estimated) observed
    vector ``o_hat[k]`` belongs to identity ``speaker[k]`` of ``shared`` [M, D]; every other
    identity is its imposter once (unstratified), or every other of its gender."""
    shared, genders = np.asarray(shared, float), np.asarray(genders)
    d = voice_distance(np.asarray(o_hat)[:, None], shared[None], sigma)      # [N, M]
    return accuracy_from_distances(d, speaker, genders)


def accuracy_from_distances(d: np.ndarray, speaker: np.ndarray, genders: np.ndarray) -> dict:
    """1:2 accuracy when probe ``k`` has distance ``d[k, j]`` to identity ``j`` and belongs to
    identity ``speaker[k]`` (the smaller distance wins, ties count half); every other
    identity is its imposter once, or every other of its gender (``genders[j]``)."""
    speaker, genders = np.asarray(speaker), np.asarray(genders)
    true = d[np.arange(len(speaker)), speaker][:, None]
    correct = (true < d) + 0.5 * (true == d)
    other = np.arange(d.shape[1])[None] != speaker[:, None]
    same = other & (genders[None] == genders[speaker][:, None])
    # per voice, then the mean over voices: every speaker weighs the same, as in the ceiling
    has = same.any(1)
    per_voice = (correct * same).sum(1)[has] / same.sum(1)[has]
    return {"match_1to2": float(((correct * other).sum(1) / other.sum(1)).mean()),
            "match_1to2_gender": float(per_voice.mean()) if has.any() else float("nan")}


def match_ceilings(shared: np.ndarray, genders: np.ndarray, sigma, trials: int,
                   rng: np.random.Generator) -> dict:
    """Monte Carlo 1:2 ceilings for identities with shared vectors ``shared`` [N, D].

    Returns ``match_1to2`` (any imposter), ``match_1to2_gender`` (imposter of the speaker's
    gender; speakers without a same-gender partner are left out), ``trials`` and the Monte
    Carlo standard errors ``stderr`` / ``stderr_gender``.
    """
    z = np.asarray(shared, float)
    genders = np.asarray(genders)
    sigma = np.asarray(sigma, float)
    if len(z) < 2:
        raise ValueError("the ceiling needs at least two identities")

    def accuracy(candidates: list[np.ndarray]) -> tuple[float, float]:
        speakers = np.array([i for i, c in enumerate(candidates) if len(c)])
        if len(speakers) == 0:
            return float("nan"), float("nan")
        i = speakers[rng.integers(len(speakers), size=trials)]
        sizes = np.array([len(c) for c in candidates])
        pick = (rng.random(trials) * sizes[i]).astype(int)
        j = np.array([candidates[a][b] for a, b in zip(i, pick)])
        o = z[i] + sigma * rng.standard_normal((trials, z.shape[1]))
        d_true, d_imp = voice_distance(o, z[i], sigma), voice_distance(o, z[j], sigma)
        correct = (d_true < d_imp) + 0.5 * (d_true == d_imp)
        return float(correct.mean()), float(correct.std() / np.sqrt(trials))

    everyone = np.arange(len(z))
    others = [np.delete(everyone, i) for i in everyone]
    same = [everyone[(genders == genders[i]) & (everyone != i)] for i in everyone]
    acc, err = accuracy(others)
    acc_g, err_g = accuracy(same)
    return {"match_1to2": acc, "match_1to2_gender": acc_g, "trials": int(trials),
            "stderr": err, "stderr_gender": err_g}


def world_ceilings(identities: list[Identity], config: WorldConfig, split: str = "test") -> dict:
    """The ceilings of a world's split, with the world's own random stream."""
    members = [ident for ident in identities if ident.split == split]
    shared = np.stack([ident.shared for ident in members])
    genders = np.array([ident.gender for ident in members])
    return match_ceilings(shared, genders, config.voice_noise, config.ceiling_trials,
                          rng_for(config.seed, CEILING))
