"""A synthetic world of speakers whose voices and faces share hidden causes.

``world.py`` samples identities (names, splits, hidden attributes), ``audio.py`` and
``faces.py`` render utterances and face images from them, ``ceiling.py`` computes the Bayes
limit of voice-to-face matching, and ``generate.py`` writes it all as shards
(``voice2face synth``, ``cli.py``). The generative model is described in ``world.py``.

Typical use from another writer::

    config = preset("default", seed=3)
    identities = sample_identities(config)           # the table, sorted by name
    for ident in identities:
        faces = [render_face(ident, f, config) for f in range(config.faces)]
    for utt in iter_utterances(identities, config):  # utt.split: train/known/val/test
        audio = render_utterance(identities[utt.identity], utt.number, config)
        pair_with = sample_faces(identities[utt.identity], utt.number, config)

The shard writer (``generate_world``) is not imported here, so rendering needs neither
the DataModule nor torch.
"""

from .audio import render_utterance
from .ceiling import match_ceilings, world_ceilings
from .faces import render_face
from .world import (PRESETS, Identity, Utterance, WorldConfig, face_key, iter_utterances,
                    preset, sample_faces, sample_identities, split_of_name)

__all__ = ["PRESETS", "Identity", "Utterance", "WorldConfig", "face_key", "iter_utterances",
           "match_ceilings", "preset", "render_face", "render_utterance", "sample_faces",
           "sample_identities", "split_of_name", "world_ceilings"]
