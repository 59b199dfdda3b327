"""Iris classifier: four measurements in, the species name out (the Cortex 0.20 example, offline)."""

import pickle
from pathlib import Path

LABELS = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class PythonPredictor:
    def __init__(self, config):
        model_path = Path(config.get("model", "model.pkl"))
        if not model_path.is_file():
            raise FileNotFoundError(
                f"{model_path} not found: run `python trainer.py` in the project folder before deploying"
            )
        with model_path.open("rb") as handle:
            self.model = pickle.load(handle)

    def predict(self, payload):
        missing = [name for name in FEATURES if name not in payload]
        if missing:
            from starlette.responses import JSONResponse

            return JSONResponse({"error": f"missing features: {', '.join(missing)}"}, status_code=400)
        measurements = [[float(payload[name]) for name in FEATURES]]
        label_id = int(self.model.predict(measurements)[0])
        return LABELS[label_id]
