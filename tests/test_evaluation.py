"""The evaluation library's arithmetic against slow, obvious computations: Liang et al.'s
Table 3 cosines, the chance level of every metric key ``make_metrics`` produces (by exact
enumeration of random rankings and guesses), the retrieval chance, the grid's draw."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanSquaredError

from voice2face.evaluation import chosen_identities
from voice2face.evaluation.chance import Split, chance_row, unrelated_cosine
from voice2face.evaluation.protocol import (RETRIEVAL_GALLERY, RETRIEVAL_K, proposal_identity,
                                            retrieval, table3_similarities)
from voice2face.metrics import (FeatureFrechetDistance, RecallAtK, compute_each, gallery_chance,
                                make_metrics, sampled_galleries)


def cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- Liang et al.'s Table 3 ------------------------------------------------------------------

def test_table3_cosines_match_a_loop():
    g = torch.Generator().manual_seed(1)
    ids = [3, 5, 8, 11, 12]
    centroids = {i: F.normalize(torch.randn(4, generator=g), dim=0) for i in ids}
    generated = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    proposal = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    speaker = torch.tensor([3, 3, 5, 8, 11, 12])
    shown = torch.tensor([5, 8, 3, 8, 99, 3])  # row 3 shows the speaker's own; 99: no mean face
    got = table3_similarities(generated, proposal, speaker, shown, centroids)
    for b in range(6):
        s, p = int(speaker[b]), int(shown[b])
        to_proposal, to_speaker = cos(generated[b], proposal[b]), cos(generated[b], centroids[s])
        assert float(got["to_proposal"][b]) == pytest.approx(to_proposal, abs=1e-6)
        assert float(got["to_speaker"][b]) == pytest.approx(to_speaker, abs=1e-6)
        others = [cos(generated[b], centroids[j]) for j in ids if j not in (s, p)]
        assert float(got["random_pairs"][b]) == pytest.approx(sum(others) / len(others), abs=1e-6)


def test_the_proposal_identity_is_the_next_other_speaker_of_the_batch():
    identity = torch.tensor([4, 4, 7, 7, 7, 2, 4])
    n = len(identity)
    expected = []
    for b in range(n):  # the nearest later sample, cyclically, of another identity
        j = next((b + s) % n for s in range(1, n) if identity[(b + s) % n] != identity[b])
        expected.append(int(identity[j]))
    assert proposal_identity(identity).tolist() == expected == [7, 7, 2, 2, 2, 4, 7]


# --- chance ----------------------------------------------------------------------------------

# a tiny split: 7 identities of alternating gender, 1 to 3 gallery images each
IMAGE_COUNTS = (1, 2, 3, 1, 2, 1, 2)
GENDER = (0, 1, 0, 1, 0, 1, 0)
N_WAY, TOP_K, BLOCK, CLASSES, IDENTITY_TOP_K = 3, (1, 2, 4, 9), 3, 7, (1, 3, 5)


def tiny_row():
    """``make_metrics``' row for the tiny split, fed uninformative embeddings (all equal: every
    ranking a tie) with one probe per identity; the keys it produces (computed or not
    applicable)."""
    row = make_metrics("test", num_classes=CLASSES, identity_top_k=IDENTITY_TOP_K, n_way=N_WAY,
                       top_k=TOP_K, recall_block_size=BLOCK)
    identity = torch.tensor([i for i, n in enumerate(IMAGE_COUNTS) for _ in range(n)])
    gender = torch.tensor([GENDER[i] for i in identity])
    row["embedding"].update(torch.ones(len(identity), 3), identity, gender, role="gallery")
    ids = torch.arange(len(IMAGE_COUNTS))
    row["embedding"].update(torch.ones(len(ids), 3), ids, torch.tensor(GENDER), role="probe")
    values, errors = compute_each(row["embedding"])
    keys = [*values, *errors, *(f"identity_top{k}" for k in IDENTITY_TOP_K), "gender_acc",
            "cosine"]
    return row, {k: float(v) for k, v in values.items()}, keys


def random_ranking_hit(candidates: int, true: set[int], k: int) -> float:
    """P(one of ``true`` among the first ``k`` of ``candidates`` shuffled), by enumerating
    every set of first ``k`` places."""
    firsts = list(itertools.combinations(range(candidates), min(k, candidates)))
    return sum(bool(true & set(c)) for c in firsts) / len(firsts)


def brute_force_chance(probe_gender: list[int], cosine: float) -> dict[str, float]:
    n_ids = len(IMAGE_COUNTS)
    out: dict[str, float] = {}
    # N-way matching: the speaker's face first among N in every ordering of them
    orders = list(itertools.permutations(range(N_WAY)))
    for key in (f"match_1to{N_WAY}", f"match_1to{N_WAY}_gender"):
        out[key] = sum(o[0] == 0 for o in orders) / len(orders)
    first_image = np.cumsum((0,) + IMAGE_COUNTS)
    blocks = [list(range(b, b + BLOCK)) for b in range(0, n_ids - BLOCK + 1, BLOCK)]
    for k in TOP_K:
        identity = np.mean([random_ranking_hit(n_ids, {i}, k) for i in range(n_ids)])
        for suffix in ("", "_l1", "_l2"):
            out[f"recall@{k}{suffix}"] = identity
        out[f"recall@{k}_image"] = np.mean([
            random_ranking_hit(sum(IMAGE_COUNTS), set(range(first_image[i], first_image[i + 1])), k)
            for i in range(n_ids)])
        out[f"recall@{k}_block{BLOCK}"] = np.mean(
            [np.mean([random_ranking_hit(len(b), {j}, k) for j in range(len(b))]) for b in blocks])
    for k in IDENTITY_TOP_K:  # a random set of k classes holds the label
        sets = list(itertools.combinations(range(CLASSES), k))
        out[f"identity_top{k}"] = np.mean([sum(label in s for s in sets) / len(sets)
                                           for label in range(CLASSES)])
    out["gender_acc"] = max(np.mean([g == guess for g in probe_gender]) for guess in (0, 1))
    out["cosine"] = cosine
    return out


def test_every_make_metrics_key_has_its_chance_level():
    row, uninformative, keys = tiny_row()
    probe_gender = [1, 1, 0, 1, 0, 1]
    chance = chance_row(row, keys, Split(IMAGE_COUNTS, torch.tensor(probe_gender), 0.125))
    expected = brute_force_chance(probe_gender, 0.125)
    assert list(chance) == keys and set(keys) == set(expected)
    assert chance == pytest.approx(expected, abs=1e-7)  # gender: a float32 mean
    # and it is what the metrics themselves score when the embeddings say nothing
    assert len(uninformative) >= 10
    for key, value in uninformative.items():
        assert value == pytest.approx(chance[key], abs=1e-6), key


def test_the_image_gallery_chance_is_the_hypergeometric_one_not_k_over_g():
    row, _, _ = tiny_row()
    chance = chance_row(row, ["recall@2_image"], Split(IMAGE_COUNTS, torch.tensor([0]), 0.0))
    g = sum(IMAGE_COUNTS)
    hypergeometric = np.mean([1 - math.comb(g - n, 2) / math.comb(g, 2) for n in IMAGE_COUNTS])
    assert chance["recall@2_image"] == pytest.approx(hypergeometric)
    assert chance["recall@2_image"] != pytest.approx(2 / g)


def test_a_key_without_a_known_chance_raises():
    split = Split(IMAGE_COUNTS, torch.tensor([0, 1]), 0.0)
    row = {"error": MetricCollection({"mse": MeanSquaredError()})}
    with pytest.raises(TypeError, match="no chance level known for mse"):
        chance_row(row, ["mse"], split)
    image_blocks = {"embedding": MetricCollection(
        {"recall": RecallAtK((1,), gallery="image", block_size=2)})}
    with pytest.raises(ValueError, match="blocks of images"):
        chance_row(image_blocks, ["recall@1_image_block2"], split)
    row, _, _ = tiny_row()
    with pytest.raises(KeyError, match="recall@3"):
        chance_row(row, ["recall@1", "recall@3"], split)


def test_the_frechet_distance_has_no_chance_cell():
    row = {"frechet": MetricCollection({"frechet": FeatureFrechetDistance(4)})}
    assert chance_row(row, ["frechet"], Split(IMAGE_COUNTS, torch.tensor([0]), 0.0)) == {}


def test_the_cosine_chance_is_a_face_against_other_identities_mean_faces():
    g = torch.Generator().manual_seed(2)
    identity = torch.tensor([0, 0, 1, 2, 2, 2])
    emb = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    centroids = {i: F.normalize(torch.randn(5, generator=g), dim=0) for i in (0, 1, 2, 3)}
    pairs = [cos(emb[r], centroids[j]) for r in range(6) for j in centroids if j != identity[r]]
    assert unrelated_cosine(emb, identity, centroids) == pytest.approx(np.mean(pairs), abs=1e-6)


GALLERY_IDENTITY = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
SPEAKERS = torch.tensor([0, 1, 2, 3, 0, 2])


def enumerated_retrieval_chance(galleries: torch.Tensor, k: int) -> float:
    """Each query's own gallery shuffled: the share of its first-k sets holding an image of
    the speaker, averaged over the queries."""
    return float(np.mean([
        random_ranking_hit(galleries.shape[1], {j for j, row in enumerate(galleries[q].tolist())
                                                if GALLERY_IDENTITY[row] == s}, k)
        for q, s in enumerate(SPEAKERS.tolist())]))


def test_the_retrieval_chance_matches_an_enumeration_of_rankings():
    g = torch.Generator().manual_seed(3)
    errors: dict[str, str] = {}
    out, size = retrieval({"method": torch.randn(6, 4, generator=g)}, SPEAKERS,
                          torch.randn(10, 4, generator=g), GALLERY_IDENTITY, seed=0, errors=errors)
    # 10 images, fewer than 500: every gallery is all of them, so 1 to 4 of the speaker's
    assert size == 10 and not errors and set(out) == {"method", "chance"}
    every = sampled_galleries(SPEAKERS, GALLERY_IDENTITY, RETRIEVAL_GALLERY, 0)
    assert out["chance"] == pytest.approx(enumerated_retrieval_chance(every, RETRIEVAL_K))


def test_the_chance_of_drawn_galleries_matches_an_enumeration_of_rankings():
    galleries = sampled_galleries(SPEAKERS, GALLERY_IDENTITY, 6, seed=4)
    assert galleries.shape == (6, 6)
    assert float(gallery_chance(SPEAKERS, GALLERY_IDENTITY, galleries, 2).mean()) == \
        pytest.approx(enumerated_retrieval_chance(galleries, 2))


def test_the_grid_identities_are_a_seeded_draw_whatever_the_order_given():
    ids = [40, 3, 17, 8, 25, 31, 12]
    drawn = chosen_identities(ids, 4, seed=5)
    assert drawn == sorted(drawn) and len(set(drawn)) == 4 and set(drawn) <= set(ids)
    assert chosen_identities(list(reversed(ids)), 4, seed=5) == drawn
    assert {tuple(chosen_identities(ids, 4, seed=s)) for s in range(10)} != {tuple(drawn)}
    assert chosen_identities(ids, 20, seed=5) == sorted(ids)
