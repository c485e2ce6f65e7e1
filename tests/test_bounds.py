"""The reference probes and the attribute instrument (``evaluation.bounds``) against slow,
obvious references on tiny hand-made inputs, and the two properties that make them bounds:
the gender-only control sits at chance on same-gender matching, and the o-oracle reaches the
world's Bayes ceiling when the read-outs are exact."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from voice2face.evaluation import bounds as B
from voice2face.synth.ceiling import match_ceilings

SIGMA = np.array([0.64, 0.9, 1.17])


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def tiny_gallery(rng, identities=6, images=(2, 3, 1, 2, 3, 2), dim=5):
    """Gallery images of ``identities`` identities (ids 10, 11, ...; even ids men) with
    random unit embeddings; unequal image counts, so per-identity weighting matters."""
    identity = np.repeat(10 + np.arange(identities), images)
    gender = (identity % 2 == 0).astype(int)
    return unit(rng.normal(size=(len(identity), dim))), identity, gender


def brute_1to2(score, probe_identity, gallery_identity, gallery_gender, larger_wins):
    """1:2 accuracy by enumerating every trial: per probe, every true image against every
    image of every imposter identity, averaged per imposter identity, then over
    imposters, then over probes."""
    ids = sorted(set(gallery_identity.tolist()))
    gender_of = {int(i): int(g) for i, g in zip(gallery_identity, gallery_gender)}
    every, same = [], []
    for k, s in enumerate(probe_identity):
        per_imposter, per_same = [], []
        for j in ids:
            if j == s:
                continue
            credits = []
            for t, i in itertools.product(np.flatnonzero(gallery_identity == s),
                                          np.flatnonzero(gallery_identity == j)):
                a, b = score[k, t], score[k, i]
                win = a > b if larger_wins else a < b
                credits.append(1.0 if win else 0.5 if a == b else 0.0)
            per_imposter.append(np.mean(credits))
            if gender_of[j] == gender_of[int(s)]:
                per_same.append(np.mean(credits))
        every.append(np.mean(per_imposter))
        if per_same:
            same.append(np.mean(per_same))
    return np.mean(every), np.mean(same)


def test_identity_means_and_posterior_weights_by_loops():
    rng = np.random.default_rng(0)
    emb, identity = rng.normal(size=(9, 4)), np.array([5, 2, 5, 7, 2, 2, 7, 5, 9])
    ids, means = B.identity_means(emb, identity)
    assert ids.tolist() == [2, 5, 7, 9]
    for i, m in zip(ids, means):
        assert np.allclose(m, sum(e for e, j in zip(emb, identity) if j == i)
                           / sum(j == i for j in identity))
    o, z = rng.normal(size=(3, 3)), rng.normal(size=(4, 3))
    w = B.posterior_weights(o, z, SIGMA)
    for n in range(3):
        like = [math.exp(-0.5 * sum(((o[n, a] - z[j, a]) / SIGMA[a]) ** 2 for a in range(3)))
                for j in range(4)]
        assert np.allclose(w[n], np.array(like) / sum(like))


def test_posterior_faces_are_the_likelihood_weighted_mean():
    rng = np.random.default_rng(1)
    o, z, emb = rng.normal(size=(4, 3)) * 2, rng.normal(size=(6, 3)), rng.normal(size=(6, 5))
    got = B.posterior_faces(o, z, emb, SIGMA)
    for n in range(4):
        like = np.array([math.exp(-0.5 * sum(((o[n, a] - z[j, a]) / SIGMA[a]) ** 2
                                            for a in range(3))) for j in range(6)])
        assert np.allclose(got[n], sum(like[j] * emb[j] for j in range(6)) / like.sum())
    # far from every prior sample the weights still normalise (no underflow to 0/0)
    assert np.isfinite(B.posterior_faces(o + 100.0, z, emb, SIGMA)).all()


def test_posterior_samples_are_prior_faces_drawn_with_the_posterior_weights():
    """Each sample is one of the prior's faces; over many draws for one o each face comes
    up as often as its posterior weight says (binomial error), the same seed draws the same
    faces, and a face of weight 0 is never drawn."""
    rng = np.random.default_rng(4)
    z, emb = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    o = np.repeat(rng.normal(size=(1, 3)), 40_000, axis=0)
    got = B.posterior_sample_faces(o, z, emb, SIGMA, np.random.default_rng(0))
    drawn = [int(np.flatnonzero((emb == g).all(1))[0]) for g in got]   # every row a prior face
    w = B.posterior_weights(o[:1], z, SIGMA)[0]
    counts = np.bincount(drawn, minlength=5) / len(o)
    assert np.all(np.abs(counts - w) <= 4 * np.sqrt(w * (1 - w) / len(o)) + 1e-12), (counts, w)
    assert np.array_equal(B.posterior_sample_faces(o[:50], z, emb, SIGMA,
                                                   np.random.default_rng(0)), got[:50])
    # o on top of face 2, every other face a thousand sigmas away: only face 2 is drawn
    far = np.r_[z[2:3], z[2:3] + 1e3 * SIGMA, z[2:3] - 1e3 * SIGMA]
    again = B.posterior_sample_faces(np.repeat(z[2:3], 100, axis=0), far, emb[:3], SIGMA,
                                     np.random.default_rng(1))
    assert (again == emb[0]).all()
    # several draws: their mean, each draw the one a loop over the same uniforms makes
    u = np.random.default_rng(2).random((7, 3))
    cumulative = B.posterior_weights(o[:7], z, SIGMA).cumsum(1)
    first_above = [[next(j for j in range(5) if cumulative[n, j] > u[n, d] * cumulative[n, -1])
                    for d in range(3)] for n in range(7)]
    loop = [np.mean([emb[j] for j in first_above[n]], axis=0) for n in range(7)]
    assert np.allclose(B.posterior_sample_faces(o[:7], z, emb, SIGMA, np.random.default_rng(2),
                                                draws=3), loop)


def test_private_traits_are_the_residuals_of_the_linear_face_model():
    """The traits by the normal equations; a face plus the traits of the drawn prior face
    (the draws of the same seed); and a prior face's own attributes with its own traits give
    the face back."""
    rng = np.random.default_rng(12)
    z = np.c_[rng.choice([-1.0, 1.0], 40), rng.normal(size=(40, 2))]
    emb = rng.normal(size=4) + z @ rng.normal(size=(3, 4)) + 0.3 * rng.normal(size=(40, 4))
    x = np.c_[np.ones(40), z]
    traits = emb - x @ np.linalg.solve(x.T @ x, x.T @ emb)
    assert np.allclose(B.private_traits(z, emb), traits)
    faces = rng.normal(size=(6, 4))
    pick = np.random.default_rng(3).integers(0, 40, 6)
    got = B.with_private_traits(faces, z, emb, np.random.default_rng(3))
    assert np.allclose(got, [faces[n] + traits[pick[n]] for n in range(6)])
    back = B.with_private_traits(B.likelihood_faces(z[pick], z, emb), z, emb,
                                 np.random.default_rng(3))
    assert np.allclose(back, emb[pick])


def test_frechet_of_probes_is_the_formula_on_their_unit_directions():
    """``frechet`` by scipy's matrix square root on the normalised probes (a face's judge
    embedding has unit length, a mean of faces does not), and 0 for a set against itself."""
    from scipy.linalg import sqrtm
    rng = np.random.default_rng(5)
    reference = unit(rng.normal(size=(400, 4)) + [2.0, 0, 0, 0])
    probes = 0.3 * (rng.normal(size=(300, 4)) * [1.0, 0.5, 0.5, 2.0] + [1.0, 1.0, 0, 0])
    p = unit(probes)
    mu_r, mu_p = reference.mean(0), p.mean(0)
    s_r, s_p = np.cov(reference, rowvar=False), np.cov(p, rowvar=False)
    want = np.sum((mu_r - mu_p) ** 2) + np.trace(s_r + s_p - 2 * sqrtm(s_r @ s_p).real)
    assert B.frechet(probes, reference) == pytest.approx(want, rel=1e-3)
    assert B.frechet(3 * reference, reference) == pytest.approx(0.0, abs=1e-4)


def test_likelihood_faces_evaluate_the_linear_face_model_at_o():
    rng = np.random.default_rng(11)
    z = np.c_[rng.choice([-1.0, 1.0], 50), rng.normal(size=(50, 2))]
    a, slopes = rng.normal(size=4), rng.normal(size=(3, 4))
    o = 3 * rng.normal(size=(5, 3))          # beyond the prior: the model extrapolates
    assert np.allclose(B.likelihood_faces(o, z, a + z @ slopes), a + o @ slopes)
    # with private traits on top, the least-squares fit, by its normal equations
    emb = a + z @ slopes + rng.normal(size=(50, 4))
    x = np.c_[np.ones(50), z]
    coef = np.linalg.solve(x.T @ x, x.T @ emb)
    assert np.allclose(B.likelihood_faces(o, z, emb), np.c_[np.ones(5), o] @ coef)


def test_calibration_inverts_the_shrinkage_of_an_estimate():
    rng = np.random.default_rng(12)
    o = rng.normal(size=(20_000, 3)) * [1.2, 1.3, 1.5] + [0.1, 0.0, -0.2]
    slope, intercept, noise = np.array([0.9, 0.35, 0.8]), np.array([0.0, 0.1, -0.1]), \
        np.array([0.2, 0.5, 0.4])
    o_hat = intercept + slope * o + noise * rng.normal(size=o.shape)
    cal = B.Calibration.fit(o_hat, o)
    for k in range(3):   # the reverse regression, as polyfit does it
        b, a = np.polyfit(o[:, k], o_hat[:, k], 1)
        assert cal.slope[k] == pytest.approx(b) and cal.intercept[k] == pytest.approx(a)
        assert cal.residual[k] == pytest.approx(np.var(o_hat[:, k] - a - b * o[:, k]))
    assert np.allclose(cal.slope, slope, atol=0.01)
    calibrated = cal(o_hat)
    assert np.allclose((calibrated - o).mean(0), 0, atol=0.02)         # unbiased for o
    assert np.allclose((calibrated - o).std(0), noise / slope, rtol=0.03)
    assert np.allclose(cal.noise(SIGMA), np.sqrt(SIGMA ** 2 + (noise / slope) ** 2), rtol=0.03)


def test_gender_faces_are_each_gender_mean():
    rng = np.random.default_rng(2)
    prior = rng.normal(size=(5, 4))
    prior_gender = np.array([1, 0, 1, 1, 0])
    got = B.gender_faces(np.array([0, 1, 1]), prior_gender, prior)
    women, men = prior[[1, 4]].mean(0), prior[[0, 2, 3]].mean(0)
    assert np.allclose(got, np.stack([women, men, men]))


def test_judge_matching_is_cosine_matching_on_single_images():
    rng = np.random.default_rng(3)
    emb, identity, gender = tiny_gallery(rng)
    speakers = np.array([10, 10, 11, 12, 13, 14, 15, 15])
    probes = unit(emb[np.searchsorted(identity, speakers)] + rng.normal(size=(8, 5)))
    got = B.judge_matching(probes, speakers, (speakers % 2 == 0).astype(int), emb, identity,
                           gender)
    want = brute_1to2(probes @ emb.T, speakers, identity, gender, larger_wins=True)
    assert got["match_1to2"] == pytest.approx(want[0], abs=1e-6)
    assert got["match_1to2_gender"] == pytest.approx(want[1], abs=1e-6)


def test_image_matching_by_enumerating_trials_with_ties():
    rng = np.random.default_rng(4)
    _, identity, gender = tiny_gallery(rng)
    speakers = np.array([10, 11, 11, 12, 13, 14, 15])
    d = rng.integers(0, 3, size=(len(speakers), len(identity))).astype(float)  # many ties
    got = B.image_matching(d, speakers, identity, gender)
    want = brute_1to2(d, speakers, identity, gender, larger_wins=False)
    assert got["match_1to2"] == pytest.approx(want[0])
    assert got["match_1to2_gender"] == pytest.approx(want[1])


def test_attribute_matching_is_the_bayes_rule_on_read_outs():
    rng = np.random.default_rng(5)
    _, identity, gender = tiny_gallery(rng)
    gallery = rng.normal(size=(len(identity), 3))
    speakers = np.array([10, 11, 12, 13, 14, 15, 15])
    probe = rng.normal(size=(len(speakers), 3))
    got = B.attribute_matching(probe, speakers, gallery, identity, gender, SIGMA)
    d = np.array([[sum(((p[a] - g[a]) / SIGMA[a]) ** 2 for a in range(3)) for g in gallery]
                  for p in probe])
    want = brute_1to2(d, speakers, identity, gender, larger_wins=False)
    assert got["attribute_match_1to2"] == pytest.approx(want[0])
    assert got["attribute_match_1to2_gender"] == pytest.approx(want[1])


def test_matching_refuses_a_speaker_without_gallery_images():
    _, identity, gender = tiny_gallery(np.random.default_rng(6))
    with pytest.raises(ValueError, match="no gallery image"):
        B.image_matching(np.zeros((1, len(identity))), np.array([99]), identity, gender)


def test_attribute_agreement_and_speaker_targets_by_loops():
    readout = np.array([[0.8, 1.0, 0.0], [-0.2, 0.5, 1.0], [0.1, -1.0, 2.0], [-0.9, 0.0, 0.0]])
    target = np.array([[1.0, 1.5, 0.5], [1.0, 0.0, 1.0], [-1.0, -1.0, 1.0], [-1.0, 0.5, -1.0]])
    got = B.attribute_agreement(readout, target)
    assert got["attribute_gender_acc"] == pytest.approx(2 / 4)
    for k, name in ((1, "age"), (2, "size")):
        t = target[:, k]
        want = 1 - sum((r - v) ** 2 for r, v in zip(readout[:, k], t)) / sum(
            (v - t.mean()) ** 2 for v in t)
        assert got[f"attribute_r2_{name}"] == pytest.approx(want)
    gallery_readout = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [-1.0, 1.0, 1.0]])
    targets = B.speaker_targets(gallery_readout, np.array([4, 4, 7]), np.array([7, 4, 7]))
    assert np.allclose(targets, [[-1, 1, 1], [2, 1, 0.5], [-1, 1, 1]])


def test_readout_recovers_attributes_that_the_embedding_holds():
    rng = np.random.default_rng(7)
    z = np.c_[rng.choice([-1.0, 1.0], 400), rng.normal(size=(400, 2))]
    emb = unit(z @ rng.normal(size=(3, 16)) + 5 * rng.normal(size=16)
                 + 0.01 * rng.normal(size=(400, 16)))
    readout = B.fit_readout(emb[:300], z[:300])
    r2 = B.readout_r2(readout, emb[300:], z[300:])
    assert set(r2) == {"readout_r2_gender", "readout_r2_age", "readout_r2_size"}
    assert min(r2.values()) > 0.95


def test_gender_only_control_scores_chance_on_same_gender_matching():
    rng = np.random.default_rng(8)
    identities, images, utterances = 12, 3, 4
    emb, identity, gender = tiny_gallery(rng, identities, (images,) * identities, dim=8)
    speakers = np.repeat(10 + np.arange(identities), utterances)
    speaker_gender = (speakers % 2 == 0).astype(int)
    prior, prior_gender = rng.normal(size=(20, 8)), np.r_[np.ones(10), np.zeros(10)].astype(int)
    probes = B.gender_faces(speaker_gender, prior_gender, prior)
    judged = B.judge_matching(probes, speakers, speaker_gender, emb, identity, gender)
    assert judged["match_1to2_gender"] == pytest.approx(0.5, abs=1e-6)
    readout = B.fit_readout(emb, rng.normal(size=(len(emb), 3)))
    attr = B.attribute_matching(readout.predict(probes), speakers, readout.predict(emb),
                                identity, gender, SIGMA)
    assert attr["attribute_match_1to2_gender"] == pytest.approx(0.5)
    # it knows the gender: where the faces show it (one direction per gender), it wins the
    # trials across genders, so the unstratified score is above chance
    sign = np.where(gender == 1, 1.0, -1.0)[:, None]
    shown = unit(emb + 3 * sign * np.eye(8)[0])
    prior_shown = prior + 3 * np.where(prior_gender == 1, 1.0, -1.0)[:, None] * np.eye(8)[0]
    probes = B.gender_faces(speaker_gender, prior_gender, prior_shown)
    judged = B.judge_matching(probes, speakers, speaker_gender, shown, identity, gender)
    assert judged["match_1to2_gender"] == pytest.approx(0.5, abs=1e-6)
    assert judged["match_1to2"] > 0.7


def exact_world(rng, n_test=300, n_prior=3000, private=5):
    """A world whose faces show their attributes exactly: a face's embedding is its z
    followed by ``private`` dimensions of private traits, so a read-out fitted on the prior's
    faces reads z back. Returns the test identities' z and genders, the prior's faces and z,
    and 20 voices per test identity (each with its own draw of o)."""
    def population(n):
        return np.c_[rng.choice([-1.0, 1.0], n, p=[0.45, 0.55]), rng.normal(size=(n, 2))]

    z, prior_z = population(n_test), population(n_prior)
    prior_emb = np.c_[prior_z, rng.normal(size=(n_prior, private))]
    speakers = np.repeat(np.arange(n_test), 20)
    o = z[speakers] + SIGMA * rng.normal(size=(len(speakers), 3))
    return z, (z[:, 0] > 0).astype(int), prior_z, prior_emb, speakers, o


def test_o_oracle_reaches_the_bayes_ceiling_when_read_outs_are_exact():
    """The o-oracle's probes, read out and matched in attribute space against single gallery
    images whose read-outs are their z, score the world's Bayes ceiling within Monte Carlo
    error; the posterior-mean face, which shrinks toward the prior's mean, does not."""
    z, gender, prior_z, prior_emb, speakers, o = exact_world(np.random.default_rng(9))
    ceiling = match_ceilings(z, gender, SIGMA, 100_000, np.random.default_rng(10))
    readout = B.fit_readout(prior_emb, prior_z, ridge=0.0)
    assert np.allclose(readout.predict(prior_emb), prior_z, atol=1e-9)
    gallery = np.repeat(np.arange(len(z)), 2)            # two images per identity
    rows = {}
    for name, probes in (("likelihood", B.likelihood_faces(o, prior_z, prior_emb)),
                         ("posterior", B.posterior_faces(o, prior_z, prior_emb, SIGMA))):
        rows[name] = B.attribute_matching(readout.predict(probes), speakers, z[gallery],
                                          gallery, gender[gallery], SIGMA)
    # 6,000 voices of 300 identities: standard errors about 0.004 / 0.005 (the ceiling's own
    # 0.001), with a margin for their clustering by identity
    got = rows["likelihood"]
    assert got["attribute_match_1to2"] == pytest.approx(ceiling["match_1to2"], abs=0.01)
    assert got["attribute_match_1to2_gender"] == pytest.approx(ceiling["match_1to2_gender"],
                                                               abs=0.015)
    short = rows["posterior"]
    assert short["attribute_match_1to2"] < got["attribute_match_1to2"] - 0.01
    assert short["attribute_match_1to2_gender"] < got["attribute_match_1to2_gender"] - 0.02
