"""Trains the iris classifier (the same model as examples/iris-classifier/trainer.py) and saves it.

config: {"model_path": "<absolute path of the model.pkl to write>", "max_iter": 1000}
"""

import json
import os
import pickle
from pathlib import Path

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


class Task:
    def __call__(self, config):
        if "model_path" not in config:
            raise ValueError(
                'config.model_path is required: the file to write, e.g. {"model_path": "/abs/model.pkl"}'
            )
        destination = Path(config["model_path"]).expanduser()
        if not destination.is_absolute():
            raise ValueError(
                f"config.model_path must be absolute, got {str(destination)!r}: the task runs in the "
                "cluster's copy of the project, not in your working directory"
            )
        iris = load_iris()
        x_train, x_test, y_train, y_test = train_test_split(
            iris.data, iris.target, test_size=0.2, random_state=0, stratify=iris.target
        )
        model = LogisticRegression(max_iter=int(config.get("max_iter", 1000))).fit(x_train, y_train)
        accuracy = float(model.score(x_test, y_test))
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
        with partial.open("wb") as handle:
            pickle.dump(model, handle)
        os.replace(partial, destination)  # a reader never sees half a model
        print(json.dumps({"model_path": str(destination), "test_accuracy": round(accuracy, 3)}))
