"""Sums lists of numbers, one result line per item; on_job_complete merges them into one file.

Each batch's results are written to their own file and renamed into place at once, so a batch that is
retried (its worker died mid-batch) replaces its earlier output: every item appears exactly once.
"""

import json
import os
import time
from pathlib import Path


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.folder = Path(config["results_dir"]) / job_spec["job_id"]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seconds_per_batch = float(
            config.get("seconds_per_batch", 0)
        )  # to watch progress, or kill a worker
        self.total_batches = job_spec["total_batch_count"]

    def predict(self, payload, batch_id):
        lines = []
        for index, numbers in enumerate(payload):
            if not isinstance(numbers, list) or not all(isinstance(n, int | float) for n in numbers):
                raise ValueError(f"item {index} of batch {batch_id} is not a list of numbers: {numbers!r}")
            lines.append(
                json.dumps({"batch_id": batch_id, "index": index, "numbers": numbers, "sum": sum(numbers)})
            )
        time.sleep(self.seconds_per_batch)
        partial = self.folder / f".batch-{batch_id}.{os.getpid()}.tmp"
        partial.write_text("".join(line + "\n" for line in lines))
        os.replace(partial, self.folder / f"batch-{int(batch_id):06d}.jsonl")

    def on_job_complete(self):
        items, total = 0, 0.0
        with (self.folder / "results.jsonl").open("w") as merged:
            for part in sorted(self.folder.glob("batch-*.jsonl")):
                for line in part.read_text().splitlines():
                    merged.write(line + "\n")
                    items += 1
                    total += json.loads(line)["sum"]
        summary = {
            "items": items,
            "sum_of_sums": total,
            "batches_written": len(list(self.folder.glob("batch-*.jsonl"))),
        }
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
