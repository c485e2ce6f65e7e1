"""The chance row: what guessing scores on each metric of a row, read from the metric objects
themselves (their N, K, gallery and block size, classes) and from the few facts of the split
that guessing depends on (``Split``). A metric whose chance is not known here is an error,
never a silently missing cell."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy
from torchmetrics.regression import CosineSimilarity

from voice2face.metrics import CrossModalMatching, FeatureFrechetDistance, RecallAtK


@dataclass(frozen=True)
class Split:
    """What guessing scores depend on in the split measured."""

    image_counts: tuple[int, ...]  # gallery images of each gallery identity
    probe_gender: Tensor           # gender code of each probe (test utterance)
    cosine: float                  # a real face's cosine to another identity's mean face

    @property
    def identities(self) -> int:
        return len(self.image_counts)

    @property
    def images(self) -> int:
        return sum(self.image_counts)


def chance_row(row: Mapping[str, Mapping[str, Metric]], keys: Iterable[str],
               split: Split) -> dict[str, float]:
    """Chance of each of ``keys`` (a row's computed values, in their order) that has one;
    ``row``: the ``{group: MetricCollection}`` they were computed by."""
    levels: dict[str, float | None] = {}
    for group in row.values():
        for name, metric in group.items(keep_base=True):
            levels.update(metric_chance(name, metric, split))
    unknown = [k for k in keys if k not in levels]
    if unknown:
        raise KeyError(f"no metric of the row gives the values {unknown}")
    return {k: levels[k] for k in keys if levels[k] is not None}


def metric_chance(name: str, metric: Metric, split: Split) -> dict[str, float | None]:
    """``{key: chance}`` for every value ``metric`` (named ``name`` in its collection)
    computes; None for a value that no guess has a level of."""
    if isinstance(metric, CrossModalMatching):  # the speaker's face is one of N
        return {name: 1.0 / metric.n_way}
    if isinstance(metric, RecallAtK):
        return {key: recall_chance(metric, k, split)
                for k, key in zip(metric.top_k, metric.output_keys)}
    if isinstance(metric, MulticlassAccuracy):  # k of the training identities at random
        return {name: min(1.0, metric.top_k / metric.num_classes)}
    if isinstance(metric, BinaryAccuracy):  # a constant guess of the more frequent gender
        p = float(split.probe_gender.float().mean()) if len(split.probe_gender) else 0.5
        return {name: max(p, 1 - p)}
    if isinstance(metric, CosineSimilarity):
        return {name: split.cosine}
    if isinstance(metric, FeatureFrechetDistance):  # a distance between two sets of faces
        return {name: None}
    raise TypeError(f"no chance level known for {name}, a {type(metric).__name__}")


def recall_chance(metric: RecallAtK, k: int, split: Split) -> float:
    """The speaker among the top ``k`` of a random ranking of ``metric``'s gallery."""
    if metric.block_size and metric.gallery_mode == "image":
        raise ValueError(f"no chance level known for recall over blocks of images "
                         f"({metric.output_keys[0]})")
    if metric.block_size:
        return min(1.0, k / metric.block_size)
    if metric.gallery_mode == "image":  # one of the speaker's n images among k of G drawn
        g = split.images
        return 1.0 if k >= g else float(np.mean(
            [1 - math.comb(g - n, k) / math.comb(g, k) for n in split.image_counts]))
    return min(1.0, k / split.identities)


def unrelated_cosine(emb: Tensor, identity: Tensor, centroids: dict[int, Tensor]) -> float:
    """Mean cosine of a real face (unit ``emb``) to the mean face of another identity: the
    cosine chance of a face unrelated to the speaker."""
    ids = sorted(centroids)
    c = torch.stack([centroids[i] for i in ids])
    sims = emb @ c.T  # [n, J]
    own = torch.tensor([ids.index(int(i)) for i in identity])
    sims[torch.arange(len(own)), own] = float("nan")
    return float(torch.nanmean(sims))
