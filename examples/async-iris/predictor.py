"""Iris classification as an AsyncAPI: the realtime predictor contract, answered through the queue.

The model is trained at start from the iris data scikit-learn ships (a few milliseconds), so the example
needs no training step.
"""

import time

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

LABELS = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class PythonPredictor:
    def __init__(self, config):
        iris = load_iris()
        self.model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
        self.delay = float(config.get("seconds_per_prediction", 0))

    def predict(self, payload):
        missing = [name for name in FEATURES if name not in payload]
        if missing:
            raise ValueError(f"missing features: {', '.join(missing)}")
        time.sleep(self.delay)
        label = LABELS[int(self.model.predict([[float(payload[name]) for name in FEATURES]])[0])]
        return {"label": label}
