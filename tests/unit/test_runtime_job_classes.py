"""Unit tests of runtime.job_classes: a BatchAPI's predictor and a TaskAPI's Task from files on disk."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from modelport.runtime.job_classes import load_batch_predictor, load_task
from modelport.runtime.predictor import PredictorLoadError

JOB_SPEC: dict[str, Any] = {"job_id": "j1", "api_name": "demo", "config": {"k": 1}, "total_batch_count": 2}


def _write(tmp_path: Path, source: str) -> str:
    (tmp_path / "job_code.py").write_text(textwrap.dedent(source))
    return "job_code.py"


def test_init_and_predict_get_only_the_parameters_they_declare(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        class PythonPredictor:
            def __init__(self, job_spec):
                self.seen = [("init", job_spec["job_id"])]
            def predict(self, batch_id):
                self.seen.append(("predict", batch_id))
        """,
    )
    predictor = load_batch_predictor(project_dir=tmp_path, path=path, job_spec=JOB_SPEC)
    predictor.predict([1, 2], batch_id="7")
    predictor.on_job_complete()  # not defined: nothing to run
    assert not predictor.has_on_job_complete
    assert predictor.instance.seen == [("init", "j1"), ("predict", "7")]


def test_config_is_the_job_specs_and_on_job_complete_runs(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        class PythonPredictor:
            def __init__(self, config, job_spec):
                self.config, self.items, self.completed = config, [], False
            def predict(self, payload, batch_id):
                self.items.extend(payload)
            def on_job_complete(self):
                self.completed = True
        """,
    )
    predictor = load_batch_predictor(project_dir=tmp_path, path=path, job_spec=JOB_SPEC)
    predictor.predict([1, 2], batch_id="0")
    predictor.on_job_complete()
    assert (predictor.instance.config, predictor.instance.items, predictor.instance.completed) == (
        {"k": 1},
        [1, 2],
        True,
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("class Other: pass", "does not define a class named PythonPredictor"),
        ("class PythonPredictor:\n    pass", "has no predict method"),
        (
            "class PythonPredictor:\n    def predict(self, payload, query_params): pass",
            "declares the parameter 'query_params'",
        ),
        (
            "class PythonPredictor:\n    async def predict(self, payload): pass",
            "PythonPredictor.predict in job_code.py is async",
        ),
        (
            "class PythonPredictor:\n    def __init__(self, config):\n        raise OSError('no model')\n"
            "    def predict(self, payload): pass",
            "OSError: no model",
        ),
    ],
)
def test_a_broken_batch_predictor_is_a_load_error(tmp_path: Path, source: str, message: str) -> None:
    path = _write(tmp_path, source)
    with pytest.raises(PredictorLoadError, match=message):
        load_batch_predictor(project_dir=tmp_path, path=path, job_spec=JOB_SPEC)


def test_a_task_is_constructed_without_arguments_and_called_with_config(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        class Task:
            def __call__(self, config):
                self.config = config
        """,
    )
    task = load_task(project_dir=tmp_path, path=path)
    task.run({"n": 3})
    assert task.instance.config == {"n": 3}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("class PythonPredictor: pass", "does not define a class named Task"),
        ("class Task: pass", "has no __call__ method"),
        ("class Task:\n    def __init__(self, config): pass\n    def __call__(self): pass", "'config'"),
    ],
)
def test_a_broken_task_is_a_load_error(tmp_path: Path, source: str, message: str) -> None:
    path = _write(tmp_path, source)
    with pytest.raises(PredictorLoadError, match=message):
        load_task(project_dir=tmp_path, path=path)
