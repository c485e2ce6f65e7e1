"""Voice-to-face evaluation metrics as torchmetrics ``Metric`` classes.

Two protocols need every embedding of a test split before they can say anything,
so their classes keep the embeddings in list states (``dist_reduce_fx="cat"``) and
do all the work in ``compute()``:

* :class:`CrossModalMatching` -- 1:N voice-to-face matching (Nagrani et al., CVPR
  2018; Wen, Singh & Raj, NeurIPS 2019, Table 3), unstratified or gender-stratified.
* :class:`RecallAtK` -- recall@K retrieval of the speaker among real faces
  (Speech2Face, Oh et al., CVPR 2019; SF2F, Bai et al. 2020).

Liang et al.'s face retrieval (the speaker among the top 5 of a sampled gallery of 500
faces) needs no state of its own: ``sampled_galleries``, ``gallery_hits`` and
``gallery_chance`` are plain functions of the embeddings, called by ``voice2face.evaluation``.

Both take two kinds of sample through one ``update``::

    update(embeddings, identity, gender=None, index=None, role="probe")

``role="probe"``: voice-side embeddings, one row per test utterance (usually the
face-encoder embedding of the face generated from it). ``role="gallery"``: the
face-encoder embeddings of real face images. ``identity`` is the speaker's integer
label in both; ``gender`` an integer code (negative = unknown; only the stratified
protocol needs it, and reads it from the gallery); ``index`` an optional
non-negative integer naming the sample (utterance number, image number).

Why one ``update`` with a ``role`` and not ``update_probes``/``update_gallery``:
``MetricCollection.update`` calls ``update`` with the same arguments on every
member, and only ``update`` goes through torchmetrics' wrapper (update counting,
cache invalidation, ``compute_on_cpu``). Probes and gallery may come from different
dataloaders, batches or ranks; nothing pairs them before ``compute()``.

Why the result does not depend on the number of ranks: ``compute()`` gathers every
rank's samples and puts them in a canonical order before anything else -- by
``index`` when given, else by content (identity, gender, the bits of the embedding)
-- so the seeded trials and every floating-point sum see the same sequence whatever
the split. With ``index``, samples that appear twice (``DistributedSampler`` pads the
last batch with copies) are kept once, and the trials are the same for every model
evaluated on the split. A rank that saw no sample sends empty tensors of the right
dtype and rank (see ``_EmbeddingMetric.sync``), so it still takes part in the gather.

Using it from a LightningModule (habit 7: one metric object per stage, keys
``stage/name``)::

    self.val_metrics = make_metrics("val", num_classes=n_train_ids)
    self.test_metrics = make_metrics("test", num_classes=n_train_ids)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        m = self.test_metrics
        if dataloader_idx == 0:                      # utterances
            fake = self.generator(self.voice_encoder(batch["mel"], batch["mel_lengths"]))
            emb = self.face_encoder(fake)
            m["embedding"].update(emb, batch["identity"], batch["gender"],
                                  batch["index"], role="probe")
            m["identity"].update(self.face_classifier(fake), batch["identity"])
            m["gender"].update(self.gender_classifier(fake), batch["gender"])
            m["cosine"].update(emb, self.face_encoder(batch["face"]))
        else:                                        # real face images
            m["embedding"].update(self.face_encoder(batch["face"]), batch["identity"],
                                  batch["gender"], batch["index"], role="gallery")

    def on_test_epoch_end(self):
        m = self.test_metrics
        self.log_dict(m["embedding"].compute())      # already global on every rank
        m["embedding"].reset()
        for key in ("identity", "gender", "cosine"):
            self.log_dict(m[key])                    # logged as objects

The embedding group is computed by hand because :class:`RecallAtK` returns one value
per K, which Lightning cannot log as a metric object; never also log it as an
object. Don't call ``forward`` (``metric(...)``) on the embedding metrics: a batch
holds no gallery, so a per-batch value means nothing; they raise. Every rank must
call ``compute()`` (Lightning's epoch-end hooks do), since it gathers.

Traps: ``compute()`` raises on a probe identity with no face in the gallery and on
too few identities, which a sanity-check run of two validation batches can hit
(``num_sanity_val_steps=0``, or give the sanity check a gallery). ``update`` raises on a
NaN or infinite embedding, naming the metric, the role and the rows of the batch: a model
that diverged is never scored. Recall@K with K at or above the gallery size (every probe
would score 1) is NaN with a warning, not an error, so that a tiny world's validation
still reports its other K; ``compute_each`` lists it among the values not computed. Exhaustive matching
and the image-gallery recall cost seconds at VoxCeleb test scale (see
``benchmarks/metrics.py``); similarities are computed ``chunk_elements`` at a time,
so memory does not grow with probes x gallery.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.regression import CosineSimilarity

ROLES = ("probe", "gallery")
SIMILARITIES = ("cosine", "l1", "l2")
GALLERIES = ("identity", "image")

# Per role, one list state per field. Embeddings are stored flattened, with the
# width of each non-empty update in `dim`: a rank that never saw a sample cannot
# know the width, and torchmetrics' gather needs the same number of dimensions
# on every rank.
_FIELDS = {
    "embedding": torch.float32,
    "dim": torch.int64,
    "identity": torch.int64,
    "gender": torch.int64,
    "index": torch.int64,
}
# Seeded trials are drawn this many at a time, a constant so that the random
# stream (and the result) does not change with `chunk_elements`.
_TRIAL_BLOCK = 4096
_DEFAULT_CHUNK = 1 << 20
# Bins per row in `_count_true_below`: enough that few elements share a bin with
# one of ~100 true scores, few enough that the per-row tables stay small.
_BINS = 4096


class _Gallery(NamedTuple):
    embedding: Tensor  # (G, D) L2-normalised, rows grouped by identity slot
    slot: Tensor  # (G,) identity slot 0..J-1, non-decreasing
    ids: Tensor  # (J,) identity labels, ascending
    count: Tensor  # (J,) images per identity
    offset: Tensor  # (J,) first row of each identity
    gender: Tensor  # (J,) gender of each identity, -1 unknown


def _cat(state: Tensor | list[Tensor], dtype: torch.dtype) -> Tensor:
    # After a DDP sync a list state is already one concatenated tensor.
    if isinstance(state, Tensor):
        return state
    if not state:
        return torch.empty(0, dtype=dtype)
    return torch.cat(state)


def _labels(name: str, value: Any, n: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(value, device=device)
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(
            f"mismatched lengths: embeddings has {n} rows but {name} has shape {tuple(t.shape)}"
        )
    return t.to(torch.int64)


def _canonical_order(embedding: Tensor, identity: Tensor, gender: Tensor, index: Tensor | None) -> Tensor:
    """A total order of the samples that ignores where they came from.

    Sorted by index (when given), identity, gender, then the bit pattern of the
    embedding; rows equal in all of these are interchangeable.
    """
    bits = embedding.detach().cpu().contiguous().view(torch.int32).numpy()
    keys = [bits[:, j] for j in range(bits.shape[1] - 1, -1, -1)]
    keys += [gender.cpu().numpy(), identity.cpu().numpy()]
    if index is not None:
        keys.append(index.cpu().numpy())
    order = np.lexsort(keys) if keys else np.arange(len(identity))
    return torch.from_numpy(order).to(identity.device)


def _scores(probe: Tensor, gallery: Tensor, similarity: str) -> Tensor:
    """(B, G) similarity of each probe to each gallery row; higher is closer."""
    if similarity == "cosine":
        return probe @ gallery.T
    if similarity == "l2":
        # minus the squared distance: same ranking as the distance, no sqrt
        return 2 * (probe @ gallery.T) - probe.square().sum(1, keepdim=True) - gallery.square().sum(1)
    return -torch.cdist(probe, gallery, p=1)


def _paired_scores(probe: Tensor, faces: Tensor, similarity: str) -> Tensor:
    """(T, N) similarity of probe t to each of its N faces (T, N, D); same formulas as `_scores`."""
    if similarity == "cosine":
        return (probe[:, None] * faces).sum(-1)
    if similarity == "l2":
        dot = (probe[:, None] * faces).sum(-1)
        return 2 * dot - probe.square().sum(1, keepdim=True) - faces.square().sum(-1)
    return -(probe[:, None] - faces).abs().sum(-1)


def _count_true_below(s: Tensor, t0: int, k: int, separate: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """(B, G) int32: for each score in ``s``, how many of the row's true scores
    ``s[:, t0:t0+k]`` are below it plus how many are below or equal to it; with
    ``separate``, the two counts as a pair.

    Exactly ``searchsorted(left) + searchsorted(right)`` against the sorted true
    scores, but several times faster on CPU, where a binary search per element is
    slow. Each row's scores are binned by f(x) = trunc(clamp((x - lo) * scale + 1))
    with lo and scale fixed per row. Every step is a correctly rounded monotone
    operation, so f is monotone and an element in a bin that holds no true score
    compares with every true score as its bin does: a prefix count over bins
    answers it. The few elements that share a bin with a true score are compared
    with that bin's true scores one by one.
    """
    n_rows, width = s.shape
    s_true = s[:, t0 : t0 + k]
    lo, hi = s_true.amin(1, keepdim=True), s_true.amax(1, keepdim=True)
    scale = torch.where(hi > lo, _BINS / (hi - lo), 1.0).clamp_max(1e30)
    s_bin = torch.sub(s, lo).mul_(scale).add_(1.0).clamp_(0, _BINS + 2).long()
    n_bins = _BINS + 3
    count = torch.zeros(n_rows, n_bins, dtype=torch.int32, device=s.device)
    count.scatter_add_(1, s_bin[:, t0 : t0 + k], torch.ones(n_rows, k, dtype=torch.int32, device=s.device))
    below = count.cumsum(1, dtype=torch.int32) - count
    out = torch.where(count > 0, -1, below if separate else 2 * below).gather(1, s_bin)

    flat = torch.nonzero(out.view(-1) < 0).squeeze(1)
    le = out.clone() if separate else None
    if flat.numel():
        row = flat // width
        x = s.view(-1)[flat]
        cell = row * n_bins + s_bin.view(-1)[flat]
        start, n = below.view(-1)[cell], count.view(-1)[cell]
        # The true scores of a bin are contiguous in the sorted true scores.
        true_sorted = s_true.sort(dim=1).values.view(-1)
        fix_lt, fix_le = start.clone(), start.clone()
        for m in range(int(n.max())):
            v = true_sorted[row * k + (start + m).clamp_max(k - 1)]
            inside = m < n
            fix_lt += (inside & (v < x)).int()
            fix_le += (inside & (v <= x)).int()
        if separate:
            out.view(-1)[flat], le.view(-1)[flat] = fix_lt, fix_le
        else:
            out.view(-1)[flat] = fix_lt + fix_le
    return (out, le) if separate else out


def _restrict(gallery: _Gallery, keep: Tensor) -> _Gallery:
    """The gallery with only the identities where ``keep`` is true; slots keep their numbers."""
    if keep.all():
        return gallery
    rows = keep[gallery.slot]
    count = torch.where(keep, gallery.count, 0)
    return gallery._replace(
        embedding=gallery.embedding[rows], slot=gallery.slot[rows], count=count, offset=torch.cumsum(count, 0) - count
    )


def _identity_chunks(slot: Tensor, rows: int):
    """(slot, first, last) for runs of equal slot in a sorted slot vector, cut to at most `rows`."""
    ids, counts = torch.unique_consecutive(slot, return_counts=True)
    start = 0
    for c, n in zip(ids.tolist(), counts.tolist()):
        for b0 in range(start, start + n, rows):
            yield c, b0, min(b0 + rows, start + n)
        start += n


class _EmbeddingMetric(Metric):
    """Stores probe and gallery embeddings; subclasses compute a protocol on them.

    Args:
        similarity: ``"cosine"``, ``"l1"`` or ``"l2"``, always on L2-normalised
            embeddings (``"l2"`` ranks by squared distance, the same order).
        chunk_elements: at most this many probe-gallery similarities are held at
            once (plus a few same-sized temporaries), whatever the split size.
        kwargs: torchmetrics ``Metric`` options (``compute_on_cpu``, ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, similarity: str = "cosine", chunk_elements: int = _DEFAULT_CHUNK, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
        self.similarity = similarity
        self.chunk_elements = int(chunk_elements)
        for role in ROLES:
            for field in _FIELDS:
                self.add_state(f"{role}_{field}", default=[], dist_reduce_fx="cat")

    def update(
        self,
        embeddings: Tensor,
        identity: Tensor,
        gender: Tensor | None = None,
        index: Tensor | None = None,
        role: str = "probe",
    ) -> None:
        """Add a batch of probes (``role="probe"``) or of gallery faces (``role="gallery"``).

        Args:
            embeddings: (n, D) float; n may be 0.
            identity: (n,) integer identity labels, shared by probes and gallery.
            gender: (n,) integer codes; negative or ``None`` means unknown.
            index: (n,) non-negative integers naming the samples of this role, or
                ``None``; give it with every update of a role or with none.
            role: ``"probe"`` or ``"gallery"``.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or not embeddings.is_floating_point():
            got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must be a float tensor of shape (n, dim), got {got}")
        n, dim = embeddings.shape
        device = embeddings.device
        finite = torch.isfinite(embeddings).all(dim=1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten().tolist()
            shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
            raise ValueError(
                f"{type(self).__name__}: {role} embeddings of this batch hold NaN or infinity in "
                f"{len(rows)} of its {n} rows (batch positions {shown}); a model whose outputs "
                f"are not finite cannot be scored"
            )
        identity = _labels("identity", identity, n, device)
        unknown = torch.full((n,), -1, dtype=torch.int64, device=device)
        gender = unknown if gender is None else _labels("gender", gender, n, device).clamp_min(-1)
        # A negative index marks "not given"; compute() rejects a role that mixes both.
        index = unknown if index is None else _labels("index", index, n, device).clamp_min(-1)
        getattr(self, f"{role}_embedding").append(embeddings.detach().to(torch.float32).reshape(-1))
        dims = [dim] if n else []
        getattr(self, f"{role}_dim").append(torch.tensor(dims, dtype=torch.int64, device=device))
        getattr(self, f"{role}_identity").append(identity)
        getattr(self, f"{role}_gender").append(gender)
        getattr(self, f"{role}_index").append(index)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{type(self).__name__} has no per-batch value (a batch holds no gallery): "
            "call update() in the step and compute() at the end of the epoch"
        )

    def sync(self, *args: Any, **kwargs: Any) -> None:
        # torchmetrics replaces an empty list state by a 1-D float32 tensor before
        # gathering; our integer states need their own dtype or gloo/NCCL would
        # gather mismatched buffers. An empty tensor adds nothing to the result.
        for role in ROLES:
            for field, dtype in _FIELDS.items():
                state = getattr(self, f"{role}_{field}")
                if isinstance(state, list) and not state:
                    state.append(torch.empty(0, dtype=dtype, device=self.device))
        super().sync(*args, **kwargs)

    # -- shared preparation -------------------------------------------------

    def _samples(self, role: str) -> tuple[Tensor, Tensor, Tensor]:
        """All samples of a role (every rank), deduplicated, in canonical order, normalised."""
        name = type(self).__name__
        flat = _cat(getattr(self, f"{role}_embedding"), torch.float32)
        dims = torch.unique(_cat(getattr(self, f"{role}_dim"), torch.int64))
        identity = _cat(getattr(self, f"{role}_identity"), torch.int64)
        gender = _cat(getattr(self, f"{role}_gender"), torch.int64)
        index = _cat(getattr(self, f"{role}_index"), torch.int64)
        n = identity.numel()
        if n == 0:
            raise ValueError(f"{name}: no {role} samples; call update(..., role={role!r}) on some rank first")
        if dims.numel() != 1:
            raise ValueError(f"{name}: {role} embeddings have different widths across updates: {dims.tolist()}")
        embedding = flat.reshape(n, int(dims))
        if not torch.isfinite(embedding).all():
            raise ValueError(f"{name}: {role} embeddings contain NaN or infinity")
        given = index >= 0
        if not given.all() and given.any():
            raise ValueError(f"{name}: pass index with every update of role {role!r} or with none")
        has_index = bool(given.all())

        order = _canonical_order(embedding, identity, gender, index if has_index else None)
        embedding, identity, gender, index = embedding[order], identity[order], gender[order], index[order]
        if has_index:
            # Copies of one sample (DistributedSampler padding) are kept once.
            dup = index[1:] == index[:-1]
            clash = dup & ((identity[1:] != identity[:-1]) | (gender[1:] != gender[:-1]))
            if clash.any():
                bad = int(index[1:][clash][0])
                raise ValueError(f"{name}: {role} index {bad} is given twice with different identity or gender")
            keep = torch.ones(n, dtype=torch.bool, device=index.device)
            keep[1:] = ~dup
            embedding, identity, gender = embedding[keep], identity[keep], gender[keep]
        return F.normalize(embedding, dim=1), identity, gender

    def _gallery(self) -> _Gallery:
        embedding, identity, gender = self._samples("gallery")
        ids, slot = torch.unique(identity, sorted=True, return_inverse=True)
        order = torch.argsort(slot, stable=True)
        embedding, slot, gender = embedding[order], slot[order], gender[order]
        n_ids = ids.numel()
        count = torch.bincount(slot, minlength=n_ids)
        offset = torch.cumsum(count, 0) - count
        # One gender per identity; images with unknown gender don't contradict it.
        big = torch.iinfo(torch.int64).max
        high = torch.full((n_ids,), -1, dtype=torch.int64, device=slot.device)
        high = high.scatter_reduce(0, slot, gender, "amax")
        low = torch.full((n_ids,), big, dtype=torch.int64, device=slot.device)
        low = low.scatter_reduce(0, slot, torch.where(gender >= 0, gender, big), "amin")
        clash = (high >= 0) & (low != high)
        if clash.any():
            bad = int(ids[clash][0])
            raise ValueError(f"{type(self).__name__}: gallery identity {bad} has faces of two genders")
        return _Gallery(embedding, slot, ids, count, offset, high)

    def _probes(self, gallery: _Gallery) -> tuple[Tensor, Tensor]:
        """Probe embeddings and the gallery slot of each probe's identity."""
        name = type(self).__name__
        embedding, identity, gender = self._samples("probe")
        if embedding.shape[1] != gallery.embedding.shape[1]:
            raise ValueError(
                f"{name}: probe embeddings have width {embedding.shape[1]}, "
                f"gallery embeddings {gallery.embedding.shape[1]}"
            )
        pos = torch.searchsorted(gallery.ids, identity).clamp_max(gallery.ids.numel() - 1)
        missing = gallery.ids[pos] != identity
        if missing.any():
            bad = torch.unique(identity[missing]).tolist()
            raise ValueError(
                f"{name}: probe identity {bad[:10]} has no face in the gallery "
                f"({gallery.ids.numel()} identities); every probe needs its true face"
            )
        known = (gender >= 0) & (gallery.gender[pos] >= 0)
        clash = known & (gender != gallery.gender[pos])
        if clash.any():
            bad = int(identity[clash][0])
            raise ValueError(f"{name}: identity {bad} has one gender among probes and another in the gallery")
        return embedding, pos

    def _row_chunk(self, width: int) -> int:
        return max(1, self.chunk_elements // max(1, width))


class CrossModalMatching(_EmbeddingMetric):
    """1:N voice-to-face matching accuracy (Nagrani et al., CVPR 2018; Wen, Singh & Raj, NeurIPS 2019).

    A trial is a probe (the embedding of the face generated from one utterance, or
    any voice-side embedding in the face-embedding space), one real face image of
    the speaker and N-1 face images of N-1 distinct other identities. It is correct
    when the speaker's face is the most similar to the probe; when the true face
    ties with t imposters and none beats it, it scores 1/(t+1), the expected
    accuracy of breaking the tie at random. The accuracy is the mean over probes of
    each probe's mean over its trials. ``n_way=2`` is the papers' headline 1:2 test
    (Wen et al. 2019, Table 3; Nagrani et al. 2018); ``stratify=True`` draws
    imposters of the speaker's gender only, the papers' gender-matched test.

    Two modes:

    * sampled (default): ``trials_per_probe`` trials per probe: the true image, the
      imposter identities (uniform without replacement among the eligible ones)
      and one image of each (uniform) are drawn from a ``torch.Generator`` seeded
      with ``seed``, in the canonical sample order, so a result is reproducible and
      the same on any number of ranks.
    * ``exhaustive=True``: the exact expectation of the sampled mode, with no
      sampling noise -- every probe against every image of its speaker and every
      image of every eligible other identity, each imposter identity weighted
      equally whatever its number of images. For N=2 that pits every test
      utterance against every other identity: 21,850 x 188 = 4.1M
      utterance-imposter pairs on the VoxCeleb1-VGGFace test split (Wen et al.
      report 2,353,560 trials), each averaged over all true x imposter image
      pairs. No trial is materialised: per chunk of probes, each gallery
      similarity is counted against the sorted true-face similarities
      (``_count_true_below``); for N>2 the chance that N-1 imposter identities
      drawn without replacement all lose (ties at 1/(t+1)) is a coefficient of a
      generating polynomial built over the identities, which is slower.

    Args:
        n_way: N, faces per trial (>= 2).
        stratify: imposters of the speaker's gender only (needs gallery gender).
        exhaustive: see above.
        trials_per_probe: sampled trials per probe (sampled mode).
        seed: seed of the sampled trials.
        similarity, chunk_elements, kwargs: see ``update`` and the module docstring.

    Raises at ``compute()``: a probe identity with no gallery face; fewer than N
    identities; a stratified trial with fewer than N-1 same-gender imposters or an
    identity of unknown gender.
    """

    def __init__(
        self,
        n_way: int = 2,
        stratify: bool = False,
        exhaustive: bool = False,
        trials_per_probe: int = 1,
        seed: int = 0,
        similarity: str = "cosine",
        chunk_elements: int = _DEFAULT_CHUNK,
        **kwargs: Any,
    ) -> None:
        super().__init__(similarity=similarity, chunk_elements=chunk_elements, **kwargs)
        if n_way < 2:
            raise ValueError(f"n_way must be at least 2, got {n_way}")
        if trials_per_probe < 1:
            raise ValueError(f"trials_per_probe must be positive, got {trials_per_probe}")
        if exhaustive and n_way > 10:
            raise ValueError(f"exhaustive matching supports n_way <= 10, got {n_way}; use sampled trials")
        self.n_way = int(n_way)
        self.stratify = bool(stratify)
        self.exhaustive = bool(exhaustive)
        self.trials_per_probe = int(trials_per_probe)
        self.seed = int(seed)

    def compute(self) -> Tensor:
        gallery = self._gallery()
        probe, slot = self._probes(gallery)
        n_ids = gallery.ids.numel()
        need = self.n_way - 1
        if n_ids < self.n_way:
            raise ValueError(
                f"{self.n_way}-way matching needs at least {self.n_way} identities in the gallery, it has {n_ids}"
            )
        eligible = ~torch.eye(n_ids, dtype=torch.bool, device=slot.device)
        used = torch.unique(slot)
        if self.stratify:
            unknown = used[gallery.gender[used] < 0]
            if unknown.numel():
                raise ValueError(
                    f"gender-stratified matching needs the gender of every probe identity; "
                    f"identity {gallery.ids[unknown].tolist()[:10]} has none in the gallery"
                )
            eligible &= gallery.gender[:, None] == gallery.gender[None, :]
            short = used[eligible[used].sum(1) < need]
            if short.numel():
                c = int(short[0])
                raise ValueError(
                    f"no imposter of the same gender available for a stratified {self.n_way}-way trial: "
                    f"identity {int(gallery.ids[c])} (gender {int(gallery.gender[c])}) has "
                    f"{int(eligible[c].sum())} other identities of its gender in the gallery, needs {need}"
                )
        value = self._exhaustive(probe, slot, gallery, eligible) if self.exhaustive else self._sampled(
            probe, slot, gallery, eligible
        )
        return value.to(device=self.device, dtype=torch.float32)

    def _sampled(self, probe: Tensor, slot: Tensor, gallery: _Gallery, eligible: Tensor) -> Tensor:
        # Draws happen on the CPU so that the trials don't depend on the device.
        gen = torch.Generator().manual_seed(self.seed)
        need = self.n_way - 1
        slot_c, eligible_c = slot.cpu(), eligible.cpu()
        count, offset = gallery.count.cpu(), gallery.offset.cpu()
        trial_probe = torch.arange(slot.numel()).repeat_interleave(self.trials_per_probe)
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, trial_probe.numel(), _TRIAL_BLOCK):
            tp = trial_probe[start : start + _TRIAL_BLOCK]
            u_true = torch.rand(tp.numel(), generator=gen, dtype=torch.float64)
            keys = torch.rand(tp.numel(), eligible.shape[0], generator=gen, dtype=torch.float64)
            u_imp = torch.rand(tp.numel(), need, generator=gen, dtype=torch.float64)
            true_slot = slot_c[tp]
            # The N-1 smallest random keys among the eligible identities: a uniform subset.
            imp_slot = keys.masked_fill(~eligible_c[true_slot], 2.0).topk(need, dim=1, largest=False).indices
            slots = torch.cat([true_slot[:, None], imp_slot], 1)
            u = torch.cat([u_true[:, None], u_imp], 1)
            pick = torch.minimum((u * count[slots]).long(), count[slots] - 1)
            rows = (offset[slots] + pick).to(gallery.embedding.device)
            s = _paired_scores(probe[tp.to(probe.device)], gallery.embedding[rows], self.similarity)
            s_true, s_imp = s[:, :1], s[:, 1:]
            ties = (s_imp == s_true).sum(1)
            credit = torch.where((s_imp > s_true).any(1), 0.0, 1.0 / (1 + ties).double())
            total += credit.sum().cpu()
        return total / trial_probe.numel()

    def _exhaustive(self, probe: Tensor, slot: Tensor, gallery: _Gallery, eligible: Tensor) -> Tensor:
        # Probes of one identity share the true images and the imposter set, and
        # need only the faces of those identities (half the gallery when stratified).
        order = torch.argsort(slot, stable=True)
        probe, slot = probe[order], slot[order]
        per_image = 1.0 / gallery.count.double()
        own = torch.eye(eligible.shape[0], dtype=torch.bool, device=eligible.device)
        needed = {}
        total = torch.zeros((), dtype=torch.float64, device=probe.device)
        for c, b0, b1 in _identity_chunks(slot, self._row_chunk(gallery.embedding.shape[0])):
            keep = eligible[c] | own[c]
            key = tuple(torch.nonzero(keep).flatten().tolist())
            if key not in needed:
                needed[key] = _restrict(gallery, keep)
            sub = needed[key]
            t0, k = int(sub.offset[c]), int(sub.count[c])
            s = _scores(probe[b0:b1], sub.embedding, self.similarity)
            if self.n_way == 2:
                total += self._credit_1to2(s, t0, k, sub, eligible[c], per_image).sum()
            else:
                total += self._credit_1toN(s, t0, k, sub, eligible[c]).sum()
        return total.cpu() / slot.numel()

    @staticmethod
    def _credit_1to2(s: Tensor, t0: int, k: int, gallery: _Gallery, imposters: Tensor, per_image: Tensor) -> Tensor:
        """Each probe's mean over true images t, imposter identities j and images i of j.

        With lt / le = how many true similarities are < / <= s_i, image i loses to
        (k - le) true images and ties with (le - lt): credit 1 - (lt + le) / 2k.
        """
        weight = (per_image * imposters.double())[gallery.slot]
        weight = weight / weight.sum()
        return 1.0 - (_count_true_below(s, t0, k).double() @ weight) / (2 * k)

    def _credit_1toN(self, s: Tensor, t0: int, k: int, gallery: _Gallery, imposters: Tensor) -> Tensor:
        """Each probe's expected credit over true images and uniform (N-1)-subsets of imposters.

        For the r-th true similarity t_r, imposter identity j has a fraction a_j of
        images below t_r and e_j equal to it. A subset S of N-1 identities scores
        sum over tie sets T in S of prod_{T} e_j prod_{S-T} a_j / (1+|T|); summed over
        all S that is the integral over y in [0, 1] of the elementary symmetric
        polynomial e_{N-1}(a_j + y e_j), a polynomial of degree N-1 in y, so
        Gauss-Legendre quadrature with ceil(N/2) nodes is exact. e_{N-1} comes from
        the power sums by Newton's identities (accurate in float64 for N <= 10).
        """
        n = self.n_way
        lt, le = _count_true_below(s, t0, k, separate=True)
        # Image i is below t_r iff le_i <= r, and ties it iff lt_i <= r < le_i.
        cols = torch.nonzero(imposters[gallery.slot]).flatten()
        rank_of = torch.cumsum(imposters, 0) - 1  # slot -> 0..M-1 among the imposters
        n_imp = int(imposters.sum())
        cell = (rank_of[gallery.slot[cols]] * (k + 1))[None, :]
        ones = torch.ones(s.shape[0], cols.numel(), dtype=torch.float64, device=s.device)

        def at_most(rank: Tensor) -> Tensor:  # (B, M, k): images of j with rank <= r
            hist = torch.zeros(s.shape[0], n_imp * (k + 1), dtype=torch.float64, device=s.device)
            hist.scatter_add_(1, cell + rank[:, cols].long(), ones)
            return hist.view(-1, n_imp, k + 1).cumsum(2)[..., :k]

        size = gallery.count[imposters].double()[None, :, None]
        below = at_most(le)
        equal = (at_most(lt) - below) / size
        below /= size
        nodes, node_weights = np.polynomial.legendre.leggauss(math.ceil(n / 2))
        credit = torch.zeros(s.shape[0], k, dtype=torch.float64, device=s.device)
        for y, w in zip((nodes + 1) / 2, node_weights / 2):
            c = below + float(y) * equal
            power, sym = [], [torch.ones_like(credit)]
            for m in range(1, n):
                power.append(c.pow(m).sum(1))
                sym.append(sum((-1) ** (i - 1) * sym[m - i] * power[i - 1] for i in range(1, m + 1)) / m)
            credit += float(w) * sym[n - 1]
        return (credit / math.comb(n_imp, n - 1)).mean(1)


class RecallAtK(_EmbeddingMetric):
    """Recall@K of the speaker's face given a probe (Speech2Face, Oh et al., CVPR 2019; SF2F, Bai et al. 2020).

    For each probe the gallery is ranked by similarity to it; recall@K is the
    fraction of probes whose speaker is among the top K. Ties are broken at random
    in expectation: a probe scores the probability that a true entry lands in the
    top K when the entries tied with the best true entry are shuffled.

    Gallery modes: ``"identity"`` -- one entry per identity, the mean of its
    L2-normalised face embeddings, renormalised (SF2F's gallery); ``"image"`` --
    one entry per face image, a hit when any image of the speaker is among the top
    K. Similarities: cosine, L1 and L2 on L2-normalised features, the three
    distances of Speech2Face's retrieval report. Every gallery identity is a
    candidate, including identities without probes.

    ``block_size`` (SF2F uses 100): the identities that have probes, in ascending
    label order, are cut into consecutive blocks of ``block_size`` (SF2F cuts its
    test identities in dataset order); each block is evaluated on its own (its
    probes against its identities' gallery entries) and the recalls are averaged
    over blocks, so that chance level (K / block_size) and the numbers compare
    across test sets of different size. A last block with fewer identities is left
    out (89 of VoxCeleb's 189 test identities); fewer than ``block_size``
    identities is an error.

    ``compute()`` returns ``{"recall@K<suffix>": value}`` for each K, the suffix
    naming the variant: ``_l1``/``_l2`` (similarity), ``_image`` (gallery),
    ``_block<size>``; cosine on the identity gallery has none.

    A K at or above the gallery size (the entries each probe is ranked among: identities,
    images, or a block's entries; for blocks of images the smallest block) puts every
    entry in the top K, so every probe would score 1: its value is NaN, with a warning
    naming K and the gallery size, and ``not_applicable`` maps its key to that reason
    until the next ``compute``.

    Args:
        top_k: the K values.
        similarity: ``"cosine"``, ``"l1"`` or ``"l2"``.
        gallery: ``"identity"`` or ``"image"``.
        block_size: identities per block, or ``None`` for the whole split.
        chunk_elements, kwargs: see the module docstring.
    """

    def __init__(
        self,
        top_k: Sequence[int] = (1, 5, 10, 20, 50),
        similarity: str = "cosine",
        gallery: str = "identity",
        block_size: int | None = None,
        chunk_elements: int = _DEFAULT_CHUNK,
        **kwargs: Any,
    ) -> None:
        super().__init__(similarity=similarity, chunk_elements=chunk_elements, **kwargs)
        top_k = tuple(int(k) for k in top_k)
        if not top_k or min(top_k) < 1:
            raise ValueError(f"top_k must be a non-empty list of positive integers, got {top_k}")
        if gallery not in GALLERIES:
            raise ValueError(f"gallery must be one of {GALLERIES}, got {gallery!r}")
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be positive or None, got {block_size}")
        self.top_k = top_k
        self.gallery_mode = gallery
        self.block_size = block_size
        self.not_applicable: dict[str, str] = {}

    @property
    def suffix(self) -> str:
        suffix = "" if self.similarity == "cosine" else f"_{self.similarity}"
        suffix += "_image" if self.gallery_mode == "image" else ""
        return suffix + (f"_block{self.block_size}" if self.block_size else "")

    @property
    def output_keys(self) -> list[str]:
        return [f"recall@{k}{self.suffix}" for k in self.top_k]

    def compute(self) -> dict[str, Tensor]:
        gallery = self._gallery()
        probe, slot = self._probes(gallery)
        if self.gallery_mode == "identity":
            n_ids = gallery.ids.numel()
            sums = torch.zeros(n_ids, gallery.embedding.shape[1], device=slot.device)
            entries = F.normalize(sums.index_add(0, gallery.slot, gallery.embedding), dim=1)
            entry_slot = torch.arange(n_ids, device=slot.device)
        else:
            entries, entry_slot = gallery.embedding, gallery.slot

        if self.block_size is None:
            blocks = [None]
        else:
            with_probes = torch.unique(slot)
            n_blocks = with_probes.numel() // self.block_size
            if n_blocks == 0:
                raise ValueError(
                    f"recall over blocks of {self.block_size} identities needs at least {self.block_size} "
                    f"identities with probes, got {with_probes.numel()}"
                )
            blocks = with_probes[: n_blocks * self.block_size].reshape(n_blocks, self.block_size)

        # Grouped by identity, a chunk of probes shares its true entries: one slice.
        order = torch.argsort(slot, stable=True)
        probe, slot = probe[order], slot[order]
        recalls, sizes = [], []
        for block in blocks:
            if block is None:
                p, ps, e, es = probe, slot, entries, entry_slot
            else:
                pm, em = torch.isin(slot, block), torch.isin(entry_slot, block)
                p, ps, e, es = probe[pm], slot[pm], entries[em], entry_slot[em]
            recalls.append(self._hits(p, ps, e, es) / ps.numel())
            sizes.append(e.shape[0])
        recall = torch.stack(recalls).mean(0).to(device=self.device, dtype=torch.float32)
        self.not_applicable = self._not_applicable(min(sizes))
        if self.not_applicable:
            recall[[self.output_keys.index(key) for key in self.not_applicable]] = float("nan")
            warnings.warn(f"{type(self).__name__}: " + "; ".join(self.not_applicable.values()),
                          stacklevel=2)
        return {key: recall[i] for i, key in enumerate(self.output_keys)}

    def _not_applicable(self, size: int) -> dict[str, str]:
        """``{key: why}`` for each K that puts the whole gallery of ``size`` entries in the top K."""
        what = "images" if self.gallery_mode == "image" else "identities"
        if self.block_size:
            what += " in the smallest block" if self.gallery_mode == "image" else " per block"
        return {key: f"{key} not applicable: K={k} is at least the gallery size, {size} {what}, "
                     f"so every probe would score 1"
                for k, key in zip(self.top_k, self.output_keys) if k >= size}

    def _hits(self, probe: Tensor, slot: Tensor, entries: Tensor, entry_slot: Tensor) -> Tensor:
        """Summed probability of a hit, per K (float64); probes and entries sorted by slot.

        Against the best true entry s*: g others score above it, e others and t
        true entries tie with it. Shuffling the tied group, the first true entry
        lands in the top K unless the first m = K - g tied places all go to others:
        P(hit) = 1 - C(e, m) / C(e + t, m) for m >= 1, else 0.
        """
        top_k = torch.tensor(self.top_k, device=probe.device)
        k_max = int(top_k.max())
        steps = torch.arange(k_max, device=probe.device, dtype=torch.float64)
        hits = torch.zeros(len(self.top_k), dtype=torch.float64, device=probe.device)
        count = torch.bincount(entry_slot, minlength=int(slot.max()) + 1)
        first = (torch.cumsum(count, 0) - count).tolist()
        count = count.tolist()
        for c, b0, b1 in _identity_chunks(slot, self._row_chunk(entries.shape[0])):
            s = _scores(probe[b0:b1], entries, self.similarity)
            s_true = s[:, first[c] : first[c] + count[c]]
            best = s_true.amax(1, keepdim=True)
            above = (s > best).sum(1, keepdim=True)  # no true entry is above the best one
            t = (s_true == best).sum(1, keepdim=True).double()
            others = (s == best).sum(1, keepdim=True).double() - t
            left = others - steps  # others still unplaced before tied place i+1
            factor = torch.where(left > 0, left / (left + t), 0.0)
            all_others = torch.cumprod(factor, 1)  # [:, m-1] = C(e, m) / C(e + t, m)
            m = top_k[None, :] - above
            miss = all_others.gather(1, (m - 1).clamp(0, k_max - 1))
            hits += torch.where(m >= 1, 1.0 - miss, 0.0).sum(0)
        return hits


class _Features(nn.Module):
    """The identity as a "feature extractor": features are computed by the caller."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class FeatureFrechetDistance(FrechetInceptionDistance):
    """Fréchet distance between the feature distributions of real and generated faces, in
    the space of a face net of our own (the judge): torchmetrics' FID with its Inception
    network replaced by features that the caller computes, since no Inception weights can be
    downloaded and a judge trained on the data measures what the data's faces vary in.

    ``update(features (B, D), real: bool)``; ``compute()`` is Heusel et al.'s
    ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``. The judge stays outside the
    metric, so a LightningModule holding this metric holds no copy of it.
    """

    def __init__(self, num_features: int, **kwargs: Any):
        super().__init__(feature=_Features(num_features), normalize=True, **kwargs)


def make_metrics(
    stage: str,
    *,
    num_classes: int | None = None,
    identity_top_k: Sequence[int] = (1, 5),
    n_way: int = 2,
    exhaustive: bool = True,
    trials_per_probe: int = 1,
    seed: int = 0,
    top_k: Sequence[int] = (1, 5, 10, 20, 50),
    recall_similarities: Sequence[str] = SIMILARITIES,
    recall_image_gallery: bool = True,
    recall_block_size: int | None = 100,
    chunk_elements: int = _DEFAULT_CHUNK,
) -> nn.ModuleDict:
    """Every metric of one stage, grouped by what their ``update`` takes.

    Returns an ``nn.ModuleDict`` (assign it to the LightningModule so the metrics
    follow its device) of ``MetricCollection``s, all with prefix ``f"{stage}/"``:

    * ``"embedding"``: ``update(embeddings, identity, gender=None, index=None, role=...)``
      (see the module docstring); keys ``{stage}/match_1to{N}``,
      ``{stage}/match_1to{N}_gender``, ``{stage}/recall@{K}`` and, per option,
      ``recall@{K}_l1``, ``recall@{K}_l2``, ``recall@{K}_image``,
      ``recall@{K}_block{size}``. Matching is exhaustive by default: it is the
      exact expectation of the seeded trials, with no sampling noise.
    * ``"identity"`` (only with ``num_classes``): ``update(logits (B, C), identity (B,))``;
      keys ``{stage}/identity_top{k}``, micro-averaged ``MulticlassAccuracy``.
    * ``"gender"``: ``update(probability or logit (B,), gender (B,) in {0, 1})``;
      key ``{stage}/gender_acc`` (``BinaryAccuracy``, threshold 0.5).
    * ``"cosine"``: ``update(generated (B, D), reference (B, D))``; key
      ``{stage}/cosine`` (``CosineSimilarity``, mean over samples).

    The embedding metrics share their states through the collection's compute
    groups, so the split is stored once.
    """
    prefix = f"{stage}/"
    common = {"chunk_elements": chunk_elements}
    match = {"n_way": n_way, "exhaustive": exhaustive, "trials_per_probe": trials_per_probe, "seed": seed}
    embedding: dict[str, Metric] = {
        f"match_1to{n_way}": CrossModalMatching(stratify=False, **match, **common),
        f"match_1to{n_way}_gender": CrossModalMatching(stratify=True, **match, **common),
    }
    variants = [{"similarity": s} for s in recall_similarities]
    if recall_image_gallery:
        variants.append({"gallery": "image"})
    if recall_block_size:
        variants.append({"block_size": recall_block_size})
    for variant in variants:
        metric = RecallAtK(top_k, **variant, **common)
        embedding[f"recall{metric.suffix}"] = metric
    groups = {"embedding": MetricCollection(embedding, prefix=prefix)}
    if num_classes is not None:
        identity = {
            f"identity_top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for k in identity_top_k
            if k <= num_classes
        }
        groups["identity"] = MetricCollection(identity, prefix=prefix)
    groups["gender"] = MetricCollection({"gender_acc": BinaryAccuracy()}, prefix=prefix)
    groups["cosine"] = MetricCollection({"cosine": CosineSimilarity(reduction="mean")}, prefix=prefix)
    return nn.ModuleDict(groups)


# --- computing a collection metric by metric ----------------------------------------------

def compute_each(group, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Compute every metric of a ``MetricCollection`` on its own: a protocol the split
    cannot support (e.g. no same-gender imposter in a tiny world) is reported in the second
    dict ({name: why}) instead of taking the others down with it, and so is a recall@K that
    is not applicable (K at or above the gallery size; its warning is this dict's entry)."""
    values: dict[str, Tensor] = {}
    errors: dict[str, str] = {}
    metrics = list(group.items(keep_base=True))
    counts = _update_counts_of_every_rank([m for _, m in metrics])
    for (name, metric), per_rank in zip(metrics, counts):
        # the same decision on every rank: a rank that skipped a compute the others make
        # would leave them waiting in its all-gather until the process group's timeout (a
        # rank that saw no sample sends empty states: _EmbeddingMetric.sync)
        if not any(per_rank):
            continue
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not applicable: K=")
                value = metric.compute()
        except ValueError as e:
            errors[prefix + name] = str(e)
            _unsync(metric)
            continue
        skip = metric.not_applicable if isinstance(metric, RecallAtK) else {}
        errors.update({prefix + k: why for k, why in skip.items()})
        if isinstance(value, dict):
            values.update({prefix + k: v for k, v in value.items() if k not in skip})
        else:
            values[prefix + name] = value
    return values, errors


def _update_counts_of_every_rank(metrics: list) -> list[list[int]]:
    """``[metric][rank]`` update counts: one all-gather for them all when the metrics sync
    on compute (DDP; on their device, which the backend can send), the local counts when
    they do not (one process, or ``evaluate``'s metrics on rank 0 after a DDP fit)."""
    local = [int(m.update_count) for m in metrics]
    dist = torch.distributed
    syncing = [m.sync_on_compute and m.distributed_available_fn() for m in metrics]
    if not (metrics and all(syncing) and dist.is_available() and dist.is_initialized()):
        return [[n] for n in local]
    mine = torch.tensor(local, dtype=torch.long, device=metrics[0].device)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return torch.stack(every, 1).tolist()


def applicable(metric: RecallAtK, values: dict[str, Tensor]) -> dict[str, Tensor]:
    """``values`` of ``metric.compute()`` without the recall@K that are not applicable (K at or
    above the gallery size: NaN, and warned about by ``compute``)."""
    return {k: v for k, v in values.items() if k not in metric.not_applicable}


def _unsync(metric) -> None:
    """Restore a metric's own states after a ``compute`` that raised under DDP: torchmetrics
    restores them only when compute returns, and ``reset`` fails on gathered states."""
    from torchmetrics.utilities.exceptions import TorchMetricsUserError
    try:
        metric.unsync()
    except TorchMetricsUserError:  # never synced: single process
        pass


# --- retrieval in sampled galleries (Liang et al.) -----------------------------------------

def sampled_galleries(query_identity: Tensor, gallery_identity: Tensor, size: int = 500,
                      seed: int = 0) -> Tensor:
    """``[Q, G]`` gallery rows, one gallery per query, for Liang et al.'s face retrieval
    ("Controlled AutoEncoders to Generate Faces from Voices", ISVC 2020: a generated face as
    the query, its speaker among the top 5 of 500 faces).

    Each gallery holds ``G = min(size, N)`` of the ``N`` gallery images, drawn without
    replacement: one image of the query's speaker and ``G - 1`` images of other identities;
    only where the other identities have fewer than ``G - 1`` images (``N`` under ``size``
    or close to it) are they all taken and more of the speaker's fill the gallery, so with
    ``N <= size`` the gallery is every image. The draw: every image gets a uniform random
    key, the speaker's images are moved behind every other (``+1``) except the one of
    smallest key, which goes in front (``-1``); the gallery is the ``G`` smallest keys, in a
    random order (ranking breaks cosine ties by it: a random tie-break).

    The draw depends on the query identities, in order, and ``seed`` only: the same galleries
    for every method evaluated on the split (drawn for blocks of queries of a size fixed by
    ``N``, so the random stream does not depend on memory settings). ``ValueError`` when a
    query's speaker has no image among the gallery images.
    """
    if size < 1:
        raise ValueError(f"gallery size must be positive, got {size}")
    query_identity, gallery_identity = query_identity.cpu(), gallery_identity.cpu()
    missing = sorted(set(query_identity.tolist()) - set(gallery_identity.tolist()))
    if missing:
        raise ValueError(f"retrieval needs an image of every query's speaker in the gallery; "
                         f"identities {missing[:10]} have none")
    n, q = len(gallery_identity), len(query_identity)
    g = min(size, n)
    generator = torch.Generator().manual_seed(int(seed))
    galleries = torch.empty(q, g, dtype=torch.long)
    rows = _retrieval_rows(n)
    for r0 in range(0, q, rows):
        own = query_identity[r0:r0 + rows, None] == gallery_identity[None, :]  # [c, N]
        keys = torch.rand(own.shape, generator=generator, dtype=torch.float64)
        first = keys.masked_fill(~own, math.inf).argmin(1, keepdim=True)  # one of the speaker's
        keys = keys + own
        keys.scatter_(1, first, -1.0)
        chosen = keys.topk(g, dim=1, largest=False).indices
        shuffle = torch.rand(chosen.shape, generator=generator).argsort(1)
        galleries[r0:r0 + rows] = chosen.gather(1, shuffle)
    return galleries


def gallery_hits(query: Tensor, query_identity: Tensor, gallery: Tensor,
                 gallery_identity: Tensor, galleries: Tensor, k: int = 5) -> Tensor:
    """``[Q]`` bool: whether an image of the query's speaker is among the ``k`` images of its
    gallery (``galleries``, rows of ``gallery``) most cosine-similar to it; ties keep the
    gallery's order (``sampled_galleries``: random)."""
    query, gallery = F.normalize(query.float(), dim=1), F.normalize(gallery.float(), dim=1)
    galleries = galleries.to(query.device)
    own = gallery_identity.to(query.device)[galleries] == query_identity.to(query.device)[:, None]
    hits = []
    rows = _retrieval_rows(len(gallery))
    for r0 in range(0, len(query), rows):
        scores = (query[r0:r0 + rows] @ gallery.T).gather(1, galleries[r0:r0 + rows])  # [c, G]
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        hits.append(own[r0:r0 + rows].gather(1, top).any(1))
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def gallery_chance(query_identity: Tensor, gallery_identity: Tensor, galleries: Tensor,
                   k: int = 5) -> Tensor:
    """``[Q]`` float64: the probability of a hit in ``gallery_hits`` under a random ranking,
    ``1 - C(G - t, k) / C(G, k)`` for ``t`` images of the speaker in a gallery of ``G`` (``k t / G``
    for one image and ``k << G``)."""
    g = galleries.shape[1]
    t = (gallery_identity[galleries] == query_identity[:, None]).sum(1).tolist()
    if k >= g:  # every image is in the top k
        return torch.ones(len(t), dtype=torch.float64)
    return torch.tensor([1.0 - math.comb(g - n, k) / math.comb(g, k) for n in t],
                        dtype=torch.float64)


def _retrieval_rows(n: int) -> int:
    """Queries per block against ``n`` gallery images: ``[rows, n]`` tensors of about
    ``_DEFAULT_CHUNK`` elements."""
    return max(1, _DEFAULT_CHUNK // max(n, 1))
