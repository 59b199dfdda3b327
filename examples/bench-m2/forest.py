"""Benchmark model M2: RandomForestClassifier(50 trees, depth 10) trained at start-up on a fixed-seed set.

The same model and output as the peers' harness (../shared/bench/models.py, SklearnRF), copied here so the
project is self-contained. Used by predictor.py (one request per call) and batch_predictor.py (batches).
"""

import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

N_IN = 64
N_CLASSES = 10


def top3(probs):
    """(n, k) probabilities -> one {"top": [3 class ids], "probs": [their probabilities]} per row."""
    indices = np.argsort(-probs, axis=1)[:, :3]
    return [
        {"top": [int(i) for i in row_indices], "probs": [float(row[i]) for i in row_indices]}
        for row, row_indices in zip(probs, indices, strict=True)
    ]


class Forest:
    def __init__(self, seed=0, n_estimators=50):
        x, y = make_classification(
            n_samples=4000,
            n_features=N_IN,
            n_informative=24,
            n_redundant=8,
            n_classes=N_CLASSES,
            random_state=seed,
        )
        self.clf = RandomForestClassifier(
            n_estimators=n_estimators, max_depth=10, random_state=seed, n_jobs=1
        )
        self.clf.fit(x, y)

    def predict(self, instances):
        x = np.asarray(instances, dtype=np.float32).reshape(-1, N_IN)
        return top3(self.clf.predict_proba(x))
