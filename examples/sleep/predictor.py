"""Sleeps for `?sleep=S` seconds (default 0), then answers "ok": for concurrency, 503 and scaling tests."""

import time


class PythonPredictor:
    def __init__(self, config):
        self.max_sleep = float(config.get("max_sleep", 60))

    def predict(self, query_params):
        seconds = min(float(query_params.get("sleep", 0)), self.max_sleep)
        time.sleep(seconds)
        return "ok"
