"""How well a dynamic layer's per-slice routing tells the modalities apart (pure numpy).

The attention a layer gives each test slice, (N, F) (K coefficients, or C_out x G in the
grouped mode, flattened), is a feature vector; :func:`decoding_accuracy` is the
cross-validated accuracy of a nearest-class-mean classifier that predicts each slice's
modality from it. 1.0: the routing separates the modalities perfectly, slice by slice; about
:func:`chance` (the larger class's share): the routing carries no modality information a
class mean can read. The mean attention per modality (``attention.csv``) cannot show this:
per-slice decisions may differ while the averages agree.
"""

from __future__ import annotations

import numpy as np

DECODING_FOLDS = 5


def chance(labels: np.ndarray) -> float:
    """The share of the most frequent label: the accuracy of always guessing it."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    return float(np.unique(labels, return_counts=True)[1].max() / labels.size)


def stratified_folds(labels: np.ndarray, folds: int) -> np.ndarray:
    """int (N,): each sample's fold, 0..folds-1, the samples of each label dealt in turn (in
    their order), so every fold holds each label about equally."""
    labels = np.asarray(labels)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        fold[where] = np.arange(len(where)) % folds
    return fold


def decoding_accuracy(
    features: np.ndarray, labels: np.ndarray, folds: int = DECODING_FOLDS
) -> float:
    """Cross-validated accuracy of a nearest-class-mean classifier of ``labels`` (N,) from
    ``features`` (N, F): each fold is predicted by the class means of the other folds
    (Euclidean distance; a tie goes to the lower label). Fewer folds when the rarer label
    has fewer samples than ``folds``; NaN with fewer than two labels or a label seen once."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        return float("nan")
    k = min(folds, int(counts.min()))
    fold = stratified_folds(y, k)
    correct = 0
    for f in range(k):
        train, test = fold != f, fold == f
        means = np.stack([x[train & (y == c)].mean(axis=0) for c in classes])
        distance = ((x[test][:, None, :] - means[None]) ** 2).sum(axis=-1)
        correct += int((classes[distance.argmin(axis=1)] == y[test]).sum())
    return correct / len(y)
