"""Train the iris classifier and save it next to the predictor as model.pkl.

Uses the iris data that scikit-learn ships (nothing is downloaded). Run it once before deploying:
    python examples/iris-classifier/trainer.py
"""

import pickle
from pathlib import Path

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def train(destination: Path) -> float:
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, iris.target, test_size=0.2, random_state=0, stratify=iris.target
    )
    model = LogisticRegression(max_iter=1000)
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    with destination.open("wb") as handle:
        pickle.dump(model, handle)
    return accuracy


if __name__ == "__main__":
    path = Path(__file__).resolve().parent / "model.pkl"
    print(f"trained iris LogisticRegression: test accuracy {train(path):.3f}, saved to {path}")
