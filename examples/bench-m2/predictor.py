"""Benchmark model M2, one request per call: {"instances": [[64 floats], ...]} -> {"predictions": [...]}."""

from forest import Forest


class PythonPredictor:
    def __init__(self, config):
        self.model = Forest(seed=int(config.get("seed", 0)))

    def predict(self, payload):
        return {"predictions": self.model.predict(payload["instances"])}
