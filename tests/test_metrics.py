"""voice2face.metrics against slow, obvious references; input errors; a real 2-process DDP run.

Most tests use embeddings whose entries are +-0.25 in 16 dimensions: they have unit
norm exactly and every cosine, L1 and L2 similarity between them is exact in
float32 and float64, so the many ties they produce are ties for the metric and
for the float64 reference alike.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from voice2face.metrics import CrossModalMatching, RecallAtK, _count_true_below, make_metrics

# -- data -------------------------------------------------------------------


def exact_split(seed: int, n_ids: int = 8, dim: int = 16, flips: int = 3, same_faces: bool = False) -> dict:
    """Uneven identities (1-4 faces, 0-5 probes each; labels not 0..n-1) with lots of exact ties.

    Identities 0 and 1 share a base vector, so their faces tie across identities.
    Genders alternate, so each gender has n_ids / 2 identities.
    """
    rng = np.random.default_rng(seed)
    base = rng.choice([-1.0, 1.0], size=(n_ids, dim))
    base[1] = base[0]

    def near(v: np.ndarray, n: int, spread: int) -> np.ndarray:
        out = np.repeat(v[None], n, 0)
        for row in out:
            row[rng.choice(dim, size=rng.integers(0, spread + 1), replace=False)] *= -1
        return out

    faces, face_ids, probes, probe_ids = [], [], [], []
    for c in range(n_ids):
        n_faces = int(rng.integers(1, 5))
        faces.append(near(base[c], n_faces, 0 if same_faces else flips))
        face_ids += [c] * n_faces
        n_probes = int(rng.integers(0, 6)) if c > 1 else 3
        probes.append(near(base[c], n_probes, flips + 2))
        probe_ids += [c] * n_probes
    return _as_split(np.concatenate(probes) * 0.25, probe_ids, np.concatenate(faces) * 0.25, face_ids)


def gauss_split(seed: int, n_ids: int = 12, dim: int = 16) -> dict:
    """Continuous embeddings (no ties), uneven identities, for the identity-mean gallery."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(n_ids, dim))
    face_ids = np.concatenate([np.arange(n_ids), rng.integers(0, n_ids, 3 * n_ids)])
    probe_ids = rng.integers(0, n_ids, 5 * n_ids)
    faces = centre[face_ids] + 0.8 * rng.normal(size=(len(face_ids), dim))
    probes = centre[probe_ids] + 1.5 * rng.normal(size=(len(probe_ids), dim))
    return _as_split(probes, probe_ids.tolist(), faces, face_ids.tolist())


def _as_split(probes, probe_ids, faces, face_ids) -> dict:
    label = lambda c: 10 * c + 3  # noqa: E731  labels need not be 0..n-1
    gender = lambda c: c % 2  # noqa: E731
    return {
        "probe": torch.tensor(probes, dtype=torch.float32),
        "probe_id": torch.tensor([label(c) for c in probe_ids]),
        "probe_gender": torch.tensor([gender(c) for c in probe_ids]),
        "face": torch.tensor(faces, dtype=torch.float32),
        "face_id": torch.tensor([label(c) for c in face_ids]),
        "face_gender": torch.tensor([gender(c) for c in face_ids]),
    }


def feed(metric, d: dict, batch: int = 5, index: bool = True, seed: int | None = None) -> None:
    """Update with probes and gallery in batches, in shuffled order when seed is given."""
    for role, emb, ids, gen in (
        ("probe", d["probe"], d["probe_id"], d["probe_gender"]),
        ("gallery", d["face"], d["face_id"], d["face_gender"]),
    ):
        order = torch.arange(len(ids))
        if seed is not None:
            order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
        for i in range(0, len(ids), batch):
            sl = order[i : i + batch]
            metric.update(emb[sl], ids[sl], gen[sl], sl if index else None, role=role)


def score_matrix(probes: torch.Tensor, faces: torch.Tensor, similarity: str) -> np.ndarray:
    """Every probe-face similarity in float64 by the textbook formulas."""
    p = probes.double().numpy()
    f = faces.double().numpy()
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    out = np.empty((len(p), len(f)))
    for i in range(len(p)):
        for j in range(len(f)):
            if similarity == "cosine":
                out[i, j] = p[i] @ f[j]
            elif similarity == "l2":
                out[i, j] = -np.sum((p[i] - f[j]) ** 2)
            else:
                out[i, j] = -np.sum(np.abs(p[i] - f[j]))
    return out


# -- references -------------------------------------------------------------


def ref_matching(d: dict, n_way: int, stratify: bool, similarity: str = "cosine") -> float:
    """Enumerate every trial: true image x (N-1)-subset of imposter identities x one image of each."""
    s = score_matrix(d["probe"], d["face"], similarity)
    face_id, probe_id = d["face_id"].tolist(), d["probe_id"].tolist()
    gender = dict(zip(face_id, d["face_gender"].tolist()))
    images = {c: [i for i, f in enumerate(face_id) if f == c] for c in sorted(set(face_id))}
    per_probe = []
    for p, c in enumerate(probe_id):
        others = [j for j in images if j != c and (not stratify or gender[j] == gender[c])]
        credits = []
        for t in images[c]:
            for subset in itertools.combinations(others, n_way - 1):
                trial = []
                for imgs in itertools.product(*(images[j] for j in subset)):
                    worst = max(s[p, i] for i in imgs)
                    ties = sum(s[p, i] == s[p, t] for i in imgs)
                    trial.append(0.0 if worst > s[p, t] else 1.0 / (1 + ties))
                credits.append(np.mean(trial))  # images of each imposter equally likely
        per_probe.append(np.mean(credits))
    return float(np.mean(per_probe))


def ref_recall(d: dict, top_k, similarity: str, gallery: str, block_size: int | None) -> dict[int, float]:
    """Rank the whole gallery for each probe; random tie-breaking in expectation, counted with math.comb."""
    probe_id, face_id = d["probe_id"].tolist(), d["face_id"].tolist()
    if gallery == "image":
        entries, entry_id = d["face"], face_id
    else:
        entry_id = sorted(set(face_id))
        f = d["face"].double()
        f = f / f.norm(dim=1, keepdim=True)
        entries = torch.stack([f[[i for i, x in enumerate(face_id) if x == c]].mean(0) for c in entry_id])
    s = score_matrix(d["probe"], entries, similarity)
    with_probes = sorted(set(probe_id))
    if block_size is None:
        blocks = [sorted(set(face_id))]
    else:
        blocks = [with_probes[i : i + block_size] for i in range(0, len(with_probes) - block_size + 1, block_size)]
    recall = {k: [] for k in top_k}
    sizes = []
    for block in blocks:
        hits = {k: [] for k in top_k}
        cols = [j for j, c in enumerate(entry_id) if c in block]
        sizes.append(len(cols))
        for p, c in enumerate(probe_id):
            if c not in block:
                continue
            best = max(s[p, j] for j in cols if entry_id[j] == c)
            above = sum(1 for j in cols if entry_id[j] != c and s[p, j] > best)
            others = sum(1 for j in cols if entry_id[j] != c and s[p, j] == best)
            true = sum(1 for j in cols if entry_id[j] == c and s[p, j] == best)
            for k in top_k:
                m = k - above  # top-K places left for the tied group
                if m <= 0:
                    hits[k].append(0.0)
                else:  # 1 - P(the first m tied places all go to other identities)
                    hits[k].append(1.0 - math.comb(others, m) / math.comb(others + true, min(m, others + true)))
        for k in top_k:
            recall[k].append(np.mean(hits[k]))
    # K at or above the gallery size ranks every entry in the top K: not applicable
    return {k: float(np.mean(v)) if k < min(sizes) else math.nan for k, v in recall.items()}


# -- CrossModalMatching -----------------------------------------------------


@pytest.mark.parametrize("similarity", ["cosine", "l1", "l2"])
@pytest.mark.parametrize("stratify", [False, True])
@pytest.mark.parametrize("n_way", [2, 3, 4])
def test_exhaustive_matching_equals_enumeration(n_way, stratify, similarity):
    d = exact_split(seed=n_way + 2 * stratify)
    metric = CrossModalMatching(n_way=n_way, stratify=stratify, exhaustive=True, similarity=similarity)
    feed(metric, d)
    assert metric.compute().item() == pytest.approx(ref_matching(d, n_way, stratify, similarity), abs=1e-6)


def test_exhaustive_many_way_matching_agrees_with_many_trials():
    # beyond what enumeration can check: 1:8 over 12 identities
    d = gauss_split(seed=9)
    exact = CrossModalMatching(n_way=8, exhaustive=True)
    sampled = CrossModalMatching(n_way=8, trials_per_probe=20000 // len(d["probe_id"]))
    feed(exact, d)
    feed(sampled, d)
    assert 0.2 < exact.compute().item() < 0.9
    assert exact.compute().item() == pytest.approx(sampled.compute().item(), abs=0.015)


def test_stratified_matching_differs_from_unstratified():
    d = exact_split(seed=5)
    values = []
    for stratify in (False, True):
        metric = CrossModalMatching(stratify=stratify, exhaustive=True)
        feed(metric, d)
        values.append(metric.compute().item())
    assert abs(values[0] - values[1]) > 1e-3


@pytest.mark.parametrize("stratify", [False, True])
@pytest.mark.parametrize("n_way", [2, 3])
def test_sampled_matching_is_seeded_and_converges_to_exhaustive(n_way, stratify):
    d = exact_split(seed=11)

    def run(**kw):
        metric = CrossModalMatching(n_way=n_way, stratify=stratify, **kw)
        feed(metric, d)
        return metric.compute().item()

    few = run(trials_per_probe=3, seed=1)
    assert run(trials_per_probe=3, seed=1) == few
    assert len({run(trials_per_probe=3, seed=s) for s in range(5)}) > 1
    n_probes = len(d["probe_id"])
    many = run(trials_per_probe=20000 // n_probes, seed=0)
    # standard error of a mean of ~20000 trials scored in [0, 1] is < 0.0036
    assert many == pytest.approx(ref_matching(d, n_way, stratify), abs=0.015)


def test_stratified_trials_draw_only_same_gender_imposters():
    # Faces of gender 1 equal the probe and always win; faces of gender 0 all tie with
    # the true face. Gender-0 probes score 1/2 per same-gender trial, 0 otherwise.
    probe = torch.tensor([[1.0, 0.0]]).expand(6, 2)
    probe_id = torch.tensor([0, 2, 4, 6, 0, 2])
    face_id = torch.arange(8)
    gender = face_id % 2
    face = torch.where((gender == 1)[:, None], torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))
    for exhaustive in (False, True):
        values = []
        for stratify in (False, True):
            metric = CrossModalMatching(stratify=stratify, exhaustive=exhaustive, trials_per_probe=400)
            metric.update(probe, probe_id, gender[probe_id], role="probe")
            metric.update(face, face_id, gender, role="gallery")
            values.append(metric.compute().item())
        assert values[1] == 0.5
        # unstratified: 3 of the 7 imposter identities share the gender
        assert values[0] == pytest.approx(3 / 14, abs=1e-7 if exhaustive else 0.03)


def test_matching_all_ties_scores_one_over_n():
    face = torch.ones(9, 4)
    face_id = torch.arange(9) // 3
    for exhaustive in (False, True):
        for n_way in (2, 3):
            metric = CrossModalMatching(n_way=n_way, exhaustive=exhaustive, trials_per_probe=7)
            metric.update(torch.ones(5, 4), torch.tensor([0, 1, 2, 2, 0]), role="probe")
            metric.update(face, face_id, role="gallery")
            assert metric.compute().item() == pytest.approx(1 / n_way, abs=1e-7)


# -- RecallAtK --------------------------------------------------------------

TOP_K = (1, 2, 3, 5, 8)


@pytest.mark.parametrize("block_size", [None, 3])
@pytest.mark.parametrize("similarity", ["cosine", "l1", "l2"])
@pytest.mark.parametrize("gallery", ["image", "identity"])
def test_recall_equals_reference_with_ties(gallery, similarity, block_size):
    # identical faces per identity keep the identity mean exact, so its ties survive
    d = exact_split(seed=21, same_faces=gallery == "identity")
    metric = RecallAtK(TOP_K, similarity=similarity, gallery=gallery, block_size=block_size)
    feed(metric, d)
    got = metric.compute()
    expected = ref_recall(d, TOP_K, similarity, gallery, block_size)
    suffix = metric.suffix
    assert set(got) == {f"recall@{k}{suffix}" for k in TOP_K}
    for k in TOP_K:
        assert got[f"recall@{k}{suffix}"].item() == pytest.approx(expected[k], abs=1e-6, nan_ok=True)
    assert not math.isnan(expected[1])


@pytest.mark.parametrize("gallery", ["image", "identity"])
def test_recall_equals_plain_top_k_without_ties(gallery):
    d = gauss_split(seed=3)
    metric = RecallAtK(TOP_K, gallery=gallery)
    feed(metric, d)
    got = metric.compute()
    probe_id, face_id = d["probe_id"].numpy(), d["face_id"].numpy()
    f = d["face"].double()
    if gallery == "identity":
        entry_id = np.unique(face_id)
        entries = torch.stack([f[torch.from_numpy(face_id == c)].div(
            f[torch.from_numpy(face_id == c)].norm(dim=1, keepdim=True)).mean(0) for c in entry_id])
    else:
        entry_id, entries = face_id, f
    s = score_matrix(d["probe"], entries, "cosine")
    ranked = entry_id[np.argsort(-s, axis=1)]
    for k in TOP_K:
        expected = np.mean([probe_id[p] in ranked[p, :k] for p in range(len(probe_id))])
        assert got[f"recall@{k}{metric.suffix}"].item() == pytest.approx(expected, abs=1e-6)


def test_recall_tie_rule_matches_random_tie_breaking():
    d = exact_split(seed=8)
    metric = RecallAtK(TOP_K, gallery="image")
    feed(metric, d)
    got = metric.compute()
    s = score_matrix(d["probe"], d["face"], "cosine")
    probe_id, face_id = d["probe_id"].numpy(), d["face_id"].numpy()
    rng = np.random.default_rng(0)
    hits = {k: 0.0 for k in TOP_K}
    draws = 400
    for _ in range(draws):
        order = np.lexsort((rng.random(s.shape), -s), axis=1)  # by score, ties in random order
        ranked = face_id[order]
        for k in TOP_K:
            hits[k] += np.mean([(ranked[p, :k] == probe_id[p]).any() for p in range(len(probe_id))])
    for k in TOP_K:
        assert got[f"recall@{k}_image"].item() == pytest.approx(hits[k] / draws, abs=0.02)


# -- invariances ------------------------------------------------------------


def all_metrics() -> list:
    return [
        CrossModalMatching(exhaustive=True),
        CrossModalMatching(n_way=3, stratify=True, exhaustive=True),
        CrossModalMatching(n_way=3, trials_per_probe=4, seed=7),
        RecallAtK(TOP_K, gallery="image"),
        RecallAtK(TOP_K, similarity="l1", block_size=3),
    ]


def results(metrics) -> list:
    """Every value as a float (NaN for a recall@K that is not applicable), comparable with
    ``same``."""
    out = []
    for m in metrics:
        value = m.compute()
        out.append([(k, float(v)) for k, v in sorted(value.items())] if isinstance(value, dict)
                   else float(value))
    return out


def same(a: list, b: list) -> bool:
    """Results equal value for value, NaN equal to NaN."""
    return np.array_equal(np.array(_flat(a)), np.array(_flat(b)), equal_nan=True) and \
        [k for k, _ in _pairs(a)] == [k for k, _ in _pairs(b)]


def _pairs(r: list) -> list:
    return [p for x in r for p in (x if isinstance(x, list) else [("", x)])]


def _flat(r: list) -> list[float]:
    return [v for _, v in _pairs(r)]


@pytest.mark.parametrize("index", [True, False])
def test_results_ignore_update_order_and_batching(index):
    d = exact_split(seed=2)
    reference = all_metrics()
    for m in reference:
        feed(m, d, batch=100, index=index)
    shuffled = all_metrics()
    for m in shuffled:
        feed(m, d, batch=3, index=index, seed=1)
    assert same(results(shuffled), results(reference))


def test_results_ignore_chunk_size():
    d = exact_split(seed=2)
    reference, chunked = all_metrics(), all_metrics()
    for a, b in zip(reference, chunked):
        feed(a, d)
        feed(b, d)
        b.chunk_elements = 1  # one probe row at a time
    a, b = torch.tensor(_flat(results(reference))), torch.tensor(_flat(results(chunked)))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6, equal_nan=True)


def test_duplicates_with_the_same_index_count_once():
    d = exact_split(seed=2)
    reference = all_metrics()
    for m in reference:
        feed(m, d)
    padded = all_metrics()
    for m in padded:
        feed(m, d)
        # what DistributedSampler does to an uneven last batch
        m.update(d["probe"][:3], d["probe_id"][:3], d["probe_gender"][:3], torch.arange(3), role="probe")
        m.update(d["face"][-2:], d["face_id"][-2:], d["face_gender"][-2:], torch.arange(len(d["face_id"]))[-2:],
                 role="gallery")
    assert same(results(padded), results(reference))


def test_similarities_are_computed_in_chunks(monkeypatch):
    import voice2face.metrics as vm

    shapes = []
    real = vm._scores
    monkeypatch.setattr(vm, "_scores", lambda p, g, sim: shapes.append((len(p), len(g))) or real(p, g, sim))
    d = gauss_split(seed=1)
    for metric in (CrossModalMatching(exhaustive=True, chunk_elements=100),
                   CrossModalMatching(n_way=3, stratify=True, exhaustive=True, chunk_elements=100),
                   RecallAtK(gallery="image", chunk_elements=100), RecallAtK(chunk_elements=100)):
        feed(metric, d)
        shapes.clear()
        metric.compute()
        # every probe was scored, never more than max(100, gallery) similarities at once
        assert sum(rows for rows, _ in shapes) == len(d["probe_id"])
        assert all(rows * cols <= max(100, cols) for rows, cols in shapes)


def test_count_true_below_equals_searchsorted():
    gen = torch.Generator().manual_seed(0)
    for trial in range(120):
        rows, width = int(torch.randint(1, 9, (), generator=gen)), int(torch.randint(1, 300, (), generator=gen))
        k = int(torch.randint(1, min(width, 40) + 1, (), generator=gen))
        t0 = int(torch.randint(0, width - k + 1, (), generator=gen))
        s = [torch.randn(rows, width, generator=gen),
             torch.randint(-4, 5, (rows, width), generator=gen) / 8.0,  # heavy ties
             torch.full((rows, width), 0.5),  # one value
             torch.randn(rows, width, generator=gen) * 1e-38][trial % 4]  # tiny range
        ranked = s[:, t0 : t0 + k].sort(1).values
        lt, le = torch.searchsorted(ranked, s), torch.searchsorted(ranked, s, right=True)
        assert torch.equal(_count_true_below(s.contiguous(), t0, k).long(), lt + le)
        got_lt, got_le = _count_true_below(s.contiguous(), t0, k, separate=True)
        assert torch.equal(got_lt.long(), lt) and torch.equal(got_le.long(), le)


# -- errors -----------------------------------------------------------------


def small() -> dict:
    return exact_split(seed=0)


def test_update_rejects_mismatched_lengths_and_bad_arguments():
    m = RecallAtK()
    with pytest.raises(ValueError, match="mismatched lengths"):
        m.update(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="mismatched lengths"):
        m.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="mismatched lengths"):
        m.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), index=torch.arange(2))
    with pytest.raises(ValueError, match="shape \\(n, dim\\)"):
        m.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        m.update(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="role"):
        m.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), role="face")
    with pytest.raises(TypeError, match="update\\(\\)"):
        m(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="similarity"):
        RecallAtK(similarity="dot")
    with pytest.raises(ValueError, match="n_way"):
        CrossModalMatching(n_way=1)


@pytest.mark.parametrize("make", [lambda: CrossModalMatching(exhaustive=True), lambda: RecallAtK()])
def test_probe_identity_without_a_face_is_an_error(make):
    d = small()
    m = make()
    feed(m, d)
    m.update(d["probe"][:2], torch.tensor([999, 3]), role="probe", index=torch.tensor([500, 501]))
    with pytest.raises(ValueError, match="probe identity \\[999\\] has no face in the gallery"):
        m.compute()


@pytest.mark.parametrize("exhaustive", [False, True])
def test_too_few_identities_is_an_error(exhaustive):
    m = CrossModalMatching(n_way=3, exhaustive=exhaustive)
    m.update(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), role="probe")
    m.update(torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1]), role="gallery")
    with pytest.raises(ValueError, match="3-way matching needs at least 3 identities in the gallery, it has 2"):
        m.compute()


@pytest.mark.parametrize("n_way", [2, 3])
def test_no_same_gender_imposter_is_an_error(n_way):
    m = CrossModalMatching(n_way=n_way, stratify=True, exhaustive=True)
    # identity 0 has n_way - 2 others of its gender, one too few
    gender = torch.tensor([0, 1, 1, 0])[: n_way + 1]
    ids = torch.arange(len(gender))
    m.update(torch.randn(len(ids), 3), ids, gender, role="probe")
    m.update(torch.randn(len(ids), 3), ids, gender, role="gallery")
    with pytest.raises(ValueError, match="no imposter of the same gender"):
        m.compute()


def test_other_compute_errors():
    d = small()
    m = CrossModalMatching(stratify=True)
    feed(m, d)
    m.update(d["face"][:1], torch.tensor([77]), role="gallery", index=torch.tensor([900]))
    m.update(d["probe"][:1], torch.tensor([77]), role="probe", index=torch.tensor([900]))
    with pytest.raises(ValueError, match="needs the gender"):
        m.compute()

    m = RecallAtK()
    feed(m, d)
    m.update(d["probe"][:1], d["probe_id"][:1], role="probe")  # no index this time
    with pytest.raises(ValueError, match="index with every update"):
        m.compute()

    m = RecallAtK()
    feed(m, d)
    m.update(torch.zeros(1, 5), d["probe_id"][:1], role="probe", index=torch.tensor([900]))
    with pytest.raises(ValueError, match="different widths"):
        m.compute()

    m = RecallAtK(block_size=100)
    feed(m, d)
    with pytest.raises(ValueError, match="blocks of 100 identities"):
        m.compute()

    m = RecallAtK()
    m.update(d["face"], d["face_id"], role="gallery")
    with pytest.raises(ValueError, match="no probe samples"):
        m.compute()

    m = RecallAtK()
    feed(m, d)
    m.update(d["face"][:1], d["face_id"][:1], 1 - d["face_gender"][:1], role="gallery", index=torch.tensor([900]))
    with pytest.raises(ValueError, match="two genders"):
        m.compute()


@pytest.mark.parametrize("make", [lambda: CrossModalMatching(exhaustive=True), lambda: RecallAtK(),
                                  lambda: make_metrics("val", top_k=(1,), recall_block_size=None)["embedding"]])
@pytest.mark.parametrize("role", ["probe", "gallery"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings_are_rejected_at_update_naming_the_rows(make, role, bad):
    d = small()
    m = make()
    feed(m, d)
    emb = d["probe"][:12].clone()
    emb[3, 5] = bad
    emb[7] = bad
    with pytest.raises(ValueError) as e:
        m.update(emb, d["probe_id"][:12], role=role, index=torch.arange(900, 912))
    msg = str(e.value)
    assert msg.startswith(("CrossModalMatching: ", "RecallAtK: ")), msg
    assert f"{role} embeddings of this batch hold NaN or infinity in 2 of its 12 rows" in msg
    assert "(batch positions 3, 7);" in msg
    # nothing of the rejected batch was kept: the metric gives what it gave before
    fresh = make()
    feed(fresh, d)
    assert same(results([m]), results([fresh]))


def test_many_bad_rows_are_listed_briefly():
    m = RecallAtK()
    with pytest.raises(ValueError, match=r"in 30 of its 30 rows \(batch positions 0, 1, 2, 3, 4, 5, 6, "
                                         r"7, 8, 9, \.\.\.\)"):
        m.update(torch.full((30, 4), float("nan")), torch.zeros(30, dtype=torch.long))


@pytest.mark.parametrize("gallery", ["identity", "image"])
def test_recall_at_or_above_the_gallery_size_is_not_applicable(gallery):
    """K below the gallery size: the brute-force recall; K at or above it: NaN with a warning
    naming K and the size, never a silent 1.0."""
    d = gauss_split(seed=5, n_ids=6)
    size = 6 if gallery == "identity" else len(d["face_id"])
    top_k = (1, size - 1, size, size + 3)
    m = RecallAtK(top_k, gallery=gallery)
    feed(m, d)
    with pytest.warns(UserWarning) as caught:
        got = m.compute()
    what = "identities" if gallery == "identity" else "images"
    expected = ref_recall(d, top_k, "cosine", gallery, None)
    for k in top_k[:2]:
        assert got[f"recall@{k}{m.suffix}"].item() == pytest.approx(expected[k], abs=1e-6)
    for k in top_k[2:]:
        key = f"recall@{k}{m.suffix}"
        assert math.isnan(got[key].item()) and math.isnan(expected[k])
        assert m.not_applicable[key] == (f"{key} not applicable: K={k} is at least the gallery "
                                         f"size, {size} {what}, so every probe would score 1")
    (warning,) = caught
    assert str(warning.message).startswith("RecallAtK: ")
    assert f"K={size} is at least the gallery size, {size} {what}" in str(warning.message)
    assert f"K={size + 3} is at least" in str(warning.message)


def test_recall_blocks_are_the_gallery_of_their_probes():
    d = exact_split(seed=21, same_faces=True)
    m = RecallAtK((1, 2, 3), block_size=3)
    feed(m, d)
    with pytest.warns(UserWarning, match="K=3 is at least the gallery size, 3 identities per block"):
        got = m.compute()
    assert got["recall@2_block3"].item() == pytest.approx(ref_recall(d, (2,), "cosine", "identity", 3)[2])
    assert math.isnan(got["recall@3_block3"].item())


def test_compute_each_lists_recall_that_is_not_applicable_without_warning():
    import warnings

    from voice2face.metrics import compute_each
    d = gauss_split(seed=5, n_ids=6)
    group = make_metrics("val", top_k=(1, 5, 6, 10), recall_similarities=("cosine",),
                         recall_image_gallery=False, recall_block_size=None)["embedding"]
    feed(group, d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dict reports it; no warning besides
        values, errors = compute_each(group, "val/")
    assert {"val/recall@1", "val/recall@5", "val/match_1to2"} <= set(values)
    assert "val/recall@6" not in values and "val/recall@10" not in values
    assert errors == {f"val/recall@{k}": f"recall@{k} not applicable: K={k} is at least the "
                                         f"gallery size, 6 identities, so every probe would score 1"
                      for k in (6, 10)}


def test_split_half_recall_reports_only_applicable_k():
    from voice2face.methods.common import SplitHalfRecall
    d = gauss_split(seed=5, n_ids=6)
    r = SplitHalfRecall("val", top_k=(1, 5, 6))
    emb = torch.cat([d["probe"], d["face"]])
    ids = torch.cat([d["probe_id"], d["face_id"]])
    r.update(emb, ids, torch.arange(len(ids)))
    with pytest.warns(UserWarning, match="K=6 is at least the gallery size"):
        got = r.compute()
    assert set(got) == {"val/recall@1", "val/recall@5"}


# -- make_metrics and Lightning ---------------------------------------------


def test_make_metrics_keys_values_and_shared_state():
    d = exact_split(seed=4, same_faces=True)
    metrics = make_metrics("test", num_classes=5, top_k=TOP_K, recall_block_size=3)
    feed(metrics["embedding"], d)
    got = metrics["embedding"].compute()
    suffixes = ["", "_l1", "_l2", "_image", "_block3"]
    assert set(got) == {"test/match_1to2", "test/match_1to2_gender"} | {
        f"test/recall@{k}{s}" for k in TOP_K for s in suffixes
    }
    # the embedding metrics hold the split once
    assert len(metrics["embedding"].compute_groups) == 1
    alone = CrossModalMatching(stratify=True, exhaustive=True)
    feed(alone, d)
    assert got["test/match_1to2_gender"] == alone.compute()
    assert got["test/match_1to2"].item() == pytest.approx(ref_matching(d, 2, False), abs=1e-6)
    assert got["test/recall@2_block3"].item() == pytest.approx(ref_recall(d, (2,), "cosine", "identity", 3)[2])
    # K at or above the block's 3 identities: not applicable, never a silent 1.0
    assert all(math.isnan(got[f"test/recall@{k}_block3"].item()) for k in TOP_K if k >= 3)

    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0], [0.8, 0.1, 0.3, 0.2, 0.0]])
    metrics["identity"].update(logits, torch.tensor([1, 2]))
    metrics["gender"].update(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, 1, 0]))
    metrics["cosine"].update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert metrics["identity"].compute() == {"test/identity_top1": 0.5, "test/identity_top5": 1.0}
    assert metrics["gender"].compute()["test/gender_acc"].item() == pytest.approx(1 / 3)
    assert metrics["cosine"].compute()["test/cosine"].item() == pytest.approx(0.5)


def test_lightning_module_logs_every_key():
    # imported here: the DDP test's spawned processes import this module and need no Lightning
    import lightning as L
    from torch.utils.data import DataLoader

    class EvalModule(L.LightningModule):
        """The pattern of the module docstring: probes and gallery from two test dataloaders."""

        def __init__(self):
            super().__init__()
            self.test_metrics = make_metrics("test", num_classes=6, top_k=(1, 2), recall_similarities=("cosine",),
                                             recall_image_gallery=False, recall_block_size=None)

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            m = self.test_metrics
            role = "probe" if dataloader_idx == 0 else "gallery"
            m["embedding"].update(batch["emb"], batch["identity"], batch["gender"], batch["index"], role=role)
            if dataloader_idx == 0:
                m["identity"].update(batch["logits"], batch["identity"])
                m["gender"].update(batch["gender"].float(), batch["gender"])
                m["cosine"].update(batch["emb"], batch["emb"])

        def on_test_epoch_end(self):
            m = self.test_metrics
            self.log_dict(m["embedding"].compute())
            m["embedding"].reset()
            for key in ("identity", "gender", "cosine"):
                self.log_dict(m[key])

    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    identity = torch.arange(12) % 4

    def rows(noise):
        return [{"emb": emb[c] + noise * torch.randn(8), "identity": c, "gender": c % 2, "index": i,
                 "logits": torch.nn.functional.one_hot(c, 6).float()} for i, c in enumerate(identity)]

    loaders = [DataLoader(rows(0.01), batch_size=5), DataLoader(rows(0.0), batch_size=5)]
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(EvalModule(), dataloaders=loaders, verbose=False)
    logged = trainer.callback_metrics
    assert set(logged) == {"test/match_1to2", "test/match_1to2_gender", "test/recall@1", "test/recall@2",
                           "test/identity_top1", "test/identity_top5", "test/gender_acc", "test/cosine"}
    assert logged["test/match_1to2"].item() == 1.0
    assert logged["test/recall@1"].item() == 1.0
    assert logged["test/identity_top1"].item() == 1.0


# -- DDP --------------------------------------------------------------------


def ddp_metrics() -> dict:
    return {
        "collection": make_metrics("test", top_k=TOP_K, recall_block_size=3)["embedding"],
        "sampled_1to3": CrossModalMatching(n_way=3, trials_per_probe=5, seed=3),
        "exhaustive_1to3_gender": CrossModalMatching(n_way=3, stratify=True, exhaustive=True),
    }


def ddp_compute(metrics: dict) -> dict:
    out = {}
    for name, m in metrics.items():
        value = m.compute()
        out.update({f"{name}:{k}": v for k, v in value.items()} if isinstance(value, dict) else {name: value})
    return out


def _ddp_worker(rank: int, init: str, plans: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = {}
    for name, per_rank in plans.items():
        metrics = ddp_metrics()
        for m in metrics.values():
            for emb, ids, gen, index, role in per_rank[rank]:
                m.update(emb, ids, gen, index, role=role)
        results[name] = ddp_compute(metrics)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def plan_updates(d: dict, rank_of, index: bool, pad: bool = False) -> list:
    """Per rank, the (embeddings, identity, gender, index, role) updates it makes."""
    per_rank = [[], []]
    for role, emb, ids, gen in (
        ("probe", d["probe"], d["probe_id"], d["probe_gender"]),
        ("gallery", d["face"], d["face_id"], d["face_gender"]),
    ):
        for i in range(len(ids)):
            r = rank_of(role, i)
            per_rank[r].append((emb[i : i + 1], ids[i : i + 1], gen[i : i + 1],
                                torch.tensor([i]) if index else None, role))
        if pad:  # DistributedSampler's copies of the first samples
            per_rank[1].append((emb[:2], ids[:2], gen[:2], torch.arange(2), role))
    return per_rank


def test_ddp_two_processes_equal_one_process(tmp_path):
    d = exact_split(seed=6)
    plans = {
        # rank 1 sees no probe at all, some gallery faces and padded copies
        "no_probes_on_rank1": plan_updates(d, lambda role, i: 0 if role == "probe" else i % 3 == 0, True, pad=True),
        # no index: the canonical order comes from the content
        "interleaved_no_index": plan_updates(d, lambda role, i: (i // 2) % 2, False),
        # rank 1 never calls update
        "idle_rank1": plan_updates(d, lambda role, i: 0, True),
    }
    expected = {}
    for index in (True, False):
        single = ddp_metrics()
        for m in single.values():
            feed(m, d, index=index)
        expected[index] = ddp_compute(single)

    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_ddp_worker, args=(init, plans, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name in plans:
            want = expected["no_index" not in name]
            assert got[name].keys() == want.keys()
            for key, value in want.items():
                torch.testing.assert_close(got[name][key], value, rtol=0, atol=0, equal_nan=True,
                                           msg=lambda m: f"{rank} {name} {key}: {m}")


def _compute_each_worker(rank: int, init: str, plan: list, out: str) -> None:
    import datetime

    from voice2face.metrics import compute_each
    # a short timeout: a rank left waiting in a collective fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    group = make_metrics("val", top_k=TOP_K, recall_block_size=3)["embedding"]
    for emb, ids, gen, index, role in plan[rank]:
        group.update(emb, ids, gen, index, role=role)
    torch.save(compute_each(group, "val/"), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_compute_each_with_a_rank_that_saw_no_sample_does_not_hang(tmp_path):
    """A rank with no validation batch computes with the others (compute_each decides on the
    update counts of every rank), and every rank gets the one-process numbers."""
    from voice2face.metrics import compute_each
    d = exact_split(seed=6)
    single = make_metrics("val", top_k=TOP_K, recall_block_size=3)["embedding"]
    feed(single, d)
    want, want_errors = compute_each(single, "val/")
    plan = plan_updates(d, lambda role, i: 0, True)  # rank 1 never calls update
    mp.spawn(_compute_each_worker, args=(f"file://{tmp_path / 'store'}", plan, str(tmp_path)),
             nprocs=2, join=True)
    for rank in range(2):
        values, errors = torch.load(tmp_path / f"rank{rank}.pt")
        assert values.keys() == want.keys() and errors == want_errors
        for key, value in want.items():
            torch.testing.assert_close(values[key], value, rtol=0, atol=0, equal_nan=True)


# -- Fréchet distance in a face net's feature space ---------------------------


def test_feature_frechet_distance_matches_scipy_reference():
    from scipy import linalg

    from voice2face.metrics import FeatureFrechetDistance

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g, dtype=torch.float64)
    fake = torch.randn(200, 8, generator=g, dtype=torch.float64) @ torch.diag(
        torch.linspace(0.5, 2.0, 8, dtype=torch.float64)) + 0.3

    metric = FeatureFrechetDistance(8)
    for chunk in real.split(64):  # several updates: the sums must add up
        metric.update(chunk, real=True)
    metric.update(fake, real=False)
    got = float(metric.compute())

    r, f = real.numpy(), fake.numpy()
    mu_r, mu_f = r.mean(0), f.mean(0)
    s_r, s_f = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    root = linalg.sqrtm(s_r @ s_f).real
    want = float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r + s_f - 2 * root))
    assert got == pytest.approx(want, rel=1e-6)

    same = FeatureFrechetDistance(8)
    same.update(real, real=True)
    same.update(real, real=False)
    assert abs(float(same.compute())) < 1e-6  # a distribution is at distance 0 from itself


# -- Liang et al.'s retrieval in sampled galleries ----------------------------------------

def retrieval_split(seed: int, n_ids: int = 10, dim: int = 16, queries: int = 40):
    """Random embeddings: 1-8 gallery images per identity, queries of random speakers."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 9, (n_ids,), generator=g)
    gallery_identity = torch.repeat_interleave(torch.arange(n_ids) * 3 + 1, counts)  # not 0..n-1
    gallery_identity = gallery_identity[torch.randperm(len(gallery_identity), generator=g)]
    query_identity = gallery_identity[torch.randint(len(gallery_identity), (queries,), generator=g)]
    return (torch.randn(queries, dim, generator=g), query_identity,
            torch.randn(len(gallery_identity), dim, generator=g), gallery_identity)


def reference_hits(query, query_identity, gallery, gallery_identity, galleries, k):
    """One query at a time: float64 cosines, a stable sort (ties keep the gallery's order)."""
    q, f = query.double().numpy(), gallery.double().numpy()
    hits = []
    for i, rows in enumerate(galleries.tolist()):
        cos = [float(q[i] @ f[j] / (np.linalg.norm(q[i]) * np.linalg.norm(f[j]))) for j in rows]
        ranked = sorted(range(len(rows)), key=lambda p: -cos[p])
        hits.append(any(int(gallery_identity[rows[p]]) == int(query_identity[i])
                        for p in ranked[:k]))
    return np.array(hits)


def reference_chance(query_identity, gallery_identity, galleries, k):
    out = []
    for i, rows in enumerate(galleries.tolist()):
        g = len(rows)
        t = sum(int(gallery_identity[j]) == int(query_identity[i]) for j in rows)
        out.append(1.0 if k >= g else 1 - math.comb(g - t, k) / math.comb(g, k))
    return np.array(out)


@pytest.mark.parametrize("seed", range(3))
def test_sampled_galleries_hold_one_image_of_the_speaker_and_the_rest_of_others(seed):
    from voice2face.metrics import sampled_galleries
    _, query_identity, gallery, gallery_identity = retrieval_split(seed)
    size = 20
    galleries = sampled_galleries(query_identity, gallery_identity, size, seed=seed)
    assert galleries.shape == (len(query_identity), size)
    for identity, rows in zip(query_identity.tolist(), galleries.tolist()):
        assert len(set(rows)) == size  # drawn without replacement
        assert sum(int(gallery_identity[j]) == identity for j in rows) == 1
    assert torch.equal(galleries, sampled_galleries(query_identity, gallery_identity, size,
                                                    seed=seed))
    assert not torch.equal(galleries, sampled_galleries(query_identity, gallery_identity, size,
                                                        seed=seed + 10))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 5])
def test_gallery_hits_and_chance_equal_a_brute_force_reference(seed, k):
    from voice2face.metrics import gallery_chance, gallery_hits, sampled_galleries
    query, query_identity, gallery, gallery_identity = retrieval_split(seed)
    galleries = sampled_galleries(query_identity, gallery_identity, 25, seed=seed)
    hits = gallery_hits(query, query_identity, gallery, gallery_identity, galleries, k)
    assert hits.dtype == torch.bool
    assert np.array_equal(hits.numpy(), reference_hits(query, query_identity, gallery,
                                                       gallery_identity, galleries, k))
    chance = gallery_chance(query_identity, gallery_identity, galleries, k)
    assert np.allclose(chance.numpy(), reference_chance(query_identity, gallery_identity,
                                                        galleries, k), rtol=0, atol=1e-12)
    # one image of the speaker, k / G, unless other identities have too few images to fill it
    others = (gallery_identity[None, :] != query_identity[:, None]).sum(1)
    assert np.allclose(chance[others >= 24].numpy(), k / 25) and (others >= 24).any()
    assert (chance[others < 24] > k / 25).all()


def test_a_gallery_set_smaller_than_the_size_is_used_whole():
    """12 images of 4 identities, a gallery of 500 asked: every gallery is all 12 images,
    each with the speaker's 3, and chance is 1 - C(9, 5) / C(12, 5)."""
    from voice2face.metrics import gallery_chance, gallery_hits, sampled_galleries
    gallery_identity = torch.arange(4).repeat_interleave(3)
    gallery = torch.nn.functional.one_hot(gallery_identity, 4).float()
    query_identity = torch.tensor([0, 1, 2, 3, 3])
    galleries = sampled_galleries(query_identity, gallery_identity, 500, seed=0)
    assert galleries.shape == (5, 12)
    assert all(sorted(rows) == list(range(12)) for rows in galleries.tolist())
    chance = gallery_chance(query_identity, gallery_identity, galleries, 5)
    assert torch.allclose(chance, torch.full((5,), 1 - 126 / 792, dtype=torch.float64))
    query = torch.nn.functional.one_hot(query_identity, 4).float()  # its speaker's direction
    assert gallery_hits(query, query_identity, gallery, gallery_identity, galleries, 1).all()
    assert not gallery_hits(-query, query_identity, gallery, gallery_identity, galleries, 5).any()
    assert gallery_chance(query_identity, gallery_identity, galleries, 12).eq(1).all()


def test_speaker_images_fill_a_gallery_that_other_identities_cannot():
    """6 images of the speaker, 4 of others, galleries of 8: the 4 others and 4 of the
    speaker's."""
    from voice2face.metrics import sampled_galleries
    gallery_identity = torch.tensor([7] * 6 + [1, 2, 2, 3])
    galleries = sampled_galleries(torch.tensor([7] * 30), gallery_identity, 8, seed=1)
    for rows in galleries.tolist():
        assert {6, 7, 8, 9} <= set(rows) and len(set(rows)) == 8
    assert len({tuple(sorted(rows)) for rows in galleries.tolist()}) > 1  # which 4 varies


def test_ties_are_broken_at_random_not_for_the_speaker():
    """Identical embeddings: every query ties with its whole gallery and hits at chance."""
    from voice2face.metrics import gallery_chance, gallery_hits, sampled_galleries
    gallery_identity = torch.arange(40)
    query_identity = torch.arange(40).repeat(50)
    galleries = sampled_galleries(query_identity, gallery_identity, 20, seed=0)
    hits = gallery_hits(torch.ones(len(query_identity), 8), query_identity,
                        torch.ones(40, 8), gallery_identity, galleries, 5)
    assert float(gallery_chance(query_identity, gallery_identity, galleries, 5).mean()) == 0.25
    assert abs(float(hits.double().mean()) - 0.25) < 0.03  # 2000 queries: sd 0.01


def test_sampled_galleries_need_an_image_of_every_speaker():
    from voice2face.metrics import sampled_galleries
    with pytest.raises(ValueError, match=r"identities \[5\] have none"):
        sampled_galleries(torch.tensor([0, 5]), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="positive"):
        sampled_galleries(torch.tensor([0]), torch.tensor([0, 1]), 0)
