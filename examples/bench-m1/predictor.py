"""Benchmark model M1: a fixed-seed numpy MLP 64 -> 256 ReLU -> 10 softmax, returning the top 3 classes.

The same model and JSON shape as the peers' harness (../shared/bench/models.py, TinyMLP), copied here so
the project is self-contained: {"instances": [[64 floats], ...]} -> {"predictions": [{"top", "probs"}, ...]}.
"""

import numpy as np

N_IN = 64
N_HIDDEN = 256
N_CLASSES = 10


def top3(probs):
    """(n, k) probabilities -> one {"top": [3 class ids], "probs": [their probabilities]} per row."""
    indices = np.argsort(-probs, axis=1)[:, :3]
    return [
        {"top": [int(i) for i in row_indices], "probs": [float(row[i]) for i in row_indices]}
        for row, row_indices in zip(probs, indices, strict=True)
    ]


class TinyMLP:
    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.w1 = (rng.standard_normal((N_IN, N_HIDDEN)) / np.sqrt(N_IN)).astype(np.float32)
        self.b1 = (rng.standard_normal(N_HIDDEN) * 0.1).astype(np.float32)
        self.w2 = (rng.standard_normal((N_HIDDEN, N_CLASSES)) / np.sqrt(N_HIDDEN)).astype(np.float32)
        self.b2 = (rng.standard_normal(N_CLASSES) * 0.1).astype(np.float32)

    def predict_proba(self, x):
        x = np.asarray(x, dtype=np.float32).reshape(-1, N_IN)
        hidden = np.maximum(x @ self.w1 + self.b1, 0.0)
        logits = hidden @ self.w2 + self.b2
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


class PythonPredictor:
    def __init__(self, config):
        self.model = TinyMLP(seed=int(config.get("seed", 0)))

    def predict(self, payload):
        return {"predictions": top3(self.model.predict_proba(payload["instances"]))}
