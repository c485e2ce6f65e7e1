"""Attribute agreement (issue 26, step 2): the judge's read-outs of (gender, age, size) of the
faces a row's probes show, against the speakers' true attributes of a synthetic world, and 1:2
matching in attribute space through the world's Bayes rule (``bounds``). Above ``protocol``
and ``instrument``, which it uses, so neither imports the other."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from voice2face.evaluation import bounds as B
from voice2face.evaluation.instrument import judge_pass
from voice2face.evaluation.protocol import Gallery, Probes, Subject, stack

ATTRIBUTE_KEYS = ("attribute_match_1to2", "attribute_match_1to2_gender", "attribute_gender_acc",
                  "attribute_r2_age", "attribute_r2_size")


def attribute_rows(subject: Subject, dm, world, gallery: Gallery, probes: Probes, device
                   ) -> dict[str, dict[str, float]]:
    """The judge's attribute read-outs (``bounds``) of each judged row's probes:
    ``{row: {ATTRIBUTE_KEYS: value}}`` for the method's faces, the real faces (the probe half
    against the other half, as ``real_faces_row``) and the unchanged proposals (with them).

    One pass of the training gallery through the judge fits the read-outs (``fit_readout``,
    to the identities' true z of ``world``, a ``HiddenAttributes``); each row's probes are
    then matched in attribute space against the test gallery's read-outs through the world's
    Bayes rule (``attribute_matching``) and compared with their speakers' z
    (``attribute_agreement``). The judge and its read-outs are the instrument: nothing trains
    on them. A pass over data only, drawing nothing at random itself; ``evaluate`` runs it
    after every other pass, so the seeded draws of the others stay as they were."""
    train = judge_pass(subject.judge, dm, "train", device)
    readout = B.fit_readout(train["emb"], world.z[train["identity"]])
    test_emb, identity = gallery.judge.numpy(), gallery.identity.numpy()
    gender, half = gallery.gender.numpy(), gallery.probe.numpy()

    def score(probe_emb, probe_identity, gallery_mask):
        probe_readout = readout.predict(probe_emb)
        row = B.attribute_matching(probe_readout, probe_identity,
                                   readout.predict(test_emb[gallery_mask]),
                                   identity[gallery_mask], gender[gallery_mask], world.sigma)
        row.update(B.attribute_agreement(probe_readout, world.z[probe_identity]))
        return {k: row[k] for k in ATTRIBUTE_KEYS}

    every = np.ones(len(identity), dtype=bool)
    speakers = stack(probes.speakers).numpy()
    out = {name: score(stack(q).numpy(), speakers, every)
           for name, q in probes.queries.items() if q}
    out["real_faces"] = score(test_emb[half], identity[half], ~half)
    return out


def attribute_chance(probe_gender: Tensor) -> dict[str, float]:
    """What guessing scores on ``ATTRIBUTE_KEYS``: 1:2 at 0.5, gender accuracy at the larger
    gender's share of the probes (a constant guess), R² 0 (the speakers' mean)."""
    p = float(probe_gender.float().mean()) if len(probe_gender) else 0.5
    return {"attribute_match_1to2": 0.5, "attribute_match_1to2_gender": 0.5,
            "attribute_gender_acc": max(p, 1 - p), "attribute_r2_age": 0.0,
            "attribute_r2_size": 0.0}

