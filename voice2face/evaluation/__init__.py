"""Evaluation of a trained method on the test split, the library behind ``voice2face evaluate``,
the evaluation after training and ``voice2face results``.

Protocol (``voice2face.metrics`` states each metric's):

* one face per test utterance, from the whole utterance; its judge embedding is the probe
  of 1:2 matching (exhaustive, unstratified and with same-gender imposters, Wen et al. 2019
  Table 3) and recall@K over the test identities (gallery: the judge embeddings of the
  test gallery images); gender accuracy of the judge's gender head on the generated faces;
  cosine similarity of the generated face's embedding to the speaker's mean real-face
  embedding;
* on the ``known`` split (held-out utterances of training identities): the judge's identity
  top-1/top-5 on the generated faces, as Wen et al. report for known subjects;
* face retrieval as Liang et al. (2020) report it, for methods that generate faces
  (``retrieval_top5``): each generated face is the query against its own gallery of 500
  test gallery images, one of the speaker's and the rest of other identities, drawn with
  the seed (``metrics.sampled_galleries``; a split of fewer images gives all of them, and
  the table says so); the share of queries with the speaker's image among the 5
  nearest by cosine, against chance ``1 - C(G - t, 5) / C(G, 5)`` for ``t`` images of the
  speaker in a gallery of ``G`` (5 / 500 = 0.01 with one). The unchanged proposals are
  measured on the same galleries. The GAN's faces are queries as much as the CAE's: one
  measure for every generator;
* for a method that morphs a proposal face (``needs_proposal``), the unchanged proposals as
  a row of their own, and the judge-space cosines of Liang et al.'s Table 3: each generated
  face to its proposal, to the speaker's mean face, and to the mean faces of the other
  identities;
* image quality: the Fréchet distance (Heusel et al. 2017) between the judge features of the
  generated faces and those of one half of the real test gallery (``frechet``, lower is
  better; the real-faces row compares the other half with it, which is what sampling alone
  leaves). The judge replaces Inception: no Inception weights are downloaded, and the judge
  was trained on what this data's faces vary in;
* attribute agreement, on a synthetic world (``attributes``; Speech2Face compares the
  attributes read from reconstructed and true faces): ridge read-outs of (gender, age, size)
  from the judge's embedding of one face, fitted on the training gallery, applied to each
  judged row's faces: gender accuracy and R² against the speakers' true attributes, and 1:2
  matching in attribute space through the world's Bayes rule (``metrics.md``'s second table);
* a method that embeds voices and faces itself (``Evaluation.OWN_SPACE``, e.g. ``dimnet``) is
  measured in its own space: its voice embedding is the probe, its face embedding makes the
  gallery, its own predictions (if it makes them) give gender and identity.

A method is used only through the contract of ``voice2face.methods.base``: what its class
declares (``evaluation``, ``needs_proposal``) and the calls that go with it.

Reference rows, measured in the same run: **chance** (``chance``: read from each metric's
own parameters); **real faces**: each test identity's gallery images split in two halves by
index, one half as probes against the other as gallery (a held-out real photo of the
speaker: what a perfect generator would score with this judge; on ``known`` the sample's
real face); the world's **ceiling** from the manifest (synthetic data only). The same seed
gives the same numbers: the data order is fixed, matching is exhaustive, and the
conditional GAN's z comes from the seeded generator.

A method's own measures (``MethodModule.extra_metrics``, e.g. the feature distances and
feature recall of ``regression``) are written under ``extra`` and as a second table.

Modules: ``protocol`` (the steps, each filling rows or returning what it measured),
``chance`` (the chance row), ``report`` (files, the Markdown table, W&B), ``run``
(``evaluate``: the steps in order; ``post_fit_evaluation``).
"""

from voice2face.evaluation.protocol import (RETRIEVAL_GALLERY, RETRIEVAL_K, RETRIEVAL_KEY,
                                            chosen_identities)
from voice2face.evaluation.report import TABLE_COLUMNS, log_evaluation, markdown_table
from voice2face.evaluation.run import evaluate, post_fit_evaluation

__all__ = ["RETRIEVAL_GALLERY", "RETRIEVAL_K", "RETRIEVAL_KEY", "TABLE_COLUMNS",
           "chosen_identities", "evaluate", "log_evaluation", "markdown_table",
           "post_fit_evaluation"]
