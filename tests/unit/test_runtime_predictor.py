"""Unit tests of runtime.predictor: argument inspection, loading the user's file, calling its methods."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport.runtime.predictor import (
    PREDICT_PARAMETERS,
    PredictCall,
    PredictorLoadError,
    declared_parameters,
    load_predictor,
    user_traceback,
)


def signature_of(fn: Any) -> inspect.Signature:
    return inspect.signature(fn)


@pytest.fixture(autouse=True)
def forget_user_modules() -> Iterator[None]:
    """Each test imports its own predictor.py: do not let one test's module shadow the next one's."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(tmp_path: Path, source: str, name: str = "predictor.py") -> Path:
    (tmp_path / name).write_text(source)
    return tmp_path


# declared_parameters


def test_declared_parameters_are_the_subset_the_method_names() -> None:
    def predict(payload: Any) -> None: ...

    def predict_all(payload: Any, query_params: Any, headers: Any) -> None: ...

    def predict_none() -> None: ...

    def predict_two(headers: Any, query_params: Any) -> None: ...

    assert declared_parameters(signature_of(predict), PREDICT_PARAMETERS, where="p") == {"payload"}
    assert declared_parameters(signature_of(predict_all), PREDICT_PARAMETERS, where="p") == {
        "payload",
        "query_params",
        "headers",
    }
    assert declared_parameters(signature_of(predict_none), PREDICT_PARAMETERS, where="p") == frozenset()
    assert declared_parameters(signature_of(predict_two), PREDICT_PARAMETERS, where="p") == {
        "headers",
        "query_params",
    }


def test_kwargs_receives_every_parameter() -> None:
    def predict(payload: Any, **kwargs: Any) -> None: ...

    assert declared_parameters(signature_of(predict), PREDICT_PARAMETERS, where="p") == set(
        PREDICT_PARAMETERS
    )


def test_an_unknown_parameter_with_a_default_is_left_alone() -> None:
    def predict(payload: Any, *args: Any, scale: float = 1.0) -> None: ...

    assert declared_parameters(signature_of(predict), PREDICT_PARAMETERS, where="p") == {"payload"}


def test_an_unknown_required_parameter_is_an_error_naming_it_and_the_choices() -> None:
    def predict(payload: Any, request: Any) -> None: ...

    with pytest.raises(PredictorLoadError) as caught:
        declared_parameters(
            signature_of(predict), PREDICT_PARAMETERS, where="PythonPredictor.predict in p.py"
        )
    message = str(caught.value)
    assert "PythonPredictor.predict in p.py" in message
    assert "'request'" in message
    assert "payload, query_params, headers, batch_id" in message


def test_a_positional_only_parameter_cannot_be_passed_by_name() -> None:
    def predict(payload: Any, /) -> None: ...

    with pytest.raises(PredictorLoadError, match="'payload'"):
        declared_parameters(signature_of(predict), PREDICT_PARAMETERS, where="p")


# load_predictor


def test_load_constructs_with_config_and_calls_predict_with_declared_arguments(tmp_path: Path) -> None:
    project = write(
        tmp_path,
        """
class PythonPredictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload, headers, batch_id):
        return {"config": self.config, "payload": payload, "headers": headers, "batch_id": batch_id}
""",
    )
    predictor = load_predictor(project_dir=project, path="predictor.py", config={"k": 1})
    assert predictor.predict_parameters == {"payload", "headers", "batch_id"}
    assert predictor.post_predict_parameters is None
    assert predictor.wants("payload") and predictor.wants("headers") and not predictor.wants("query_params")
    call = PredictCall(payload=[1], query_params={"q": "1"}, headers={"h": "v"})
    assert predictor.predict(call) == {
        "config": {"k": 1},
        "payload": [1],
        "headers": {"h": "v"},
        "batch_id": None,
    }


def test_init_without_config_and_predict_without_arguments(tmp_path: Path) -> None:
    project = write(
        tmp_path,
        """
class PythonPredictor:
    def predict(self):
        return "no arguments"
""",
    )
    predictor = load_predictor(project_dir=project, path="predictor.py", config={"ignored": True})
    assert predictor.predict(PredictCall()) == "no arguments"


def test_post_predict_receives_its_declared_subset(tmp_path: Path) -> None:
    project = write(
        tmp_path,
        """
class PythonPredictor:
    def __init__(self, config):
        self.seen = []

    def predict(self, payload):
        return payload * 2

    def post_predict(self, response, query_params):
        self.seen.append((response, query_params))
""",
    )
    predictor = load_predictor(project_dir=project, path="predictor.py", config={})
    assert predictor.post_predict_parameters == frozenset({"response", "query_params"})
    assert predictor.wants("query_params")  # declared by post_predict only: still computed
    call = PredictCall(payload=21, query_params={"a": "b"})
    predictor.post_predict(predictor.predict(call), call)
    assert predictor.instance.seen == [(42, {"a": "b"})]


def test_static_and_class_methods_are_inspected_without_self(tmp_path: Path) -> None:
    project = write(
        tmp_path,
        """
class PythonPredictor:
    @staticmethod
    def predict(payload):
        return payload

    @classmethod
    def post_predict(cls, response):
        pass
""",
    )
    predictor = load_predictor(project_dir=project, path="predictor.py", config={})
    assert predictor.predict_parameters == {"payload"}
    assert predictor.post_predict_parameters == frozenset({"response"})


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(PredictorLoadError) as caught:
        load_predictor(project_dir=tmp_path, path="nope.py", config={})
    message = str(caught.value)
    assert "predictor file not found" in message and "nope.py" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("source", "error"),
    [
        pytest.param(
            "class Predictor:\n    def predict(self): ...\n",
            r"predictor\.py does not define a class named PythonPredictor",
            id="missing class",
        ),
        pytest.param(
            "class PythonPredictor:\n    def infer(self, payload): ...\n",
            r"has no predict method.*predict\(self, payload",
            id="missing predict: the signature is shown",
        ),
        pytest.param(
            "class PythonPredictor:\n    async def predict(self, payload): ...\n",
            r"predict in predictor\.py is async; define it with a plain def",
            id="async predict: the fix is shown",
        ),
    ],
)
def test_a_predictor_class_that_cannot_serve_is_rejected_with_the_reason(
    tmp_path: Path, source: str, error: str
) -> None:
    project = write(tmp_path, source)
    with pytest.raises(PredictorLoadError, match=error):
        load_predictor(project_dir=project, path="predictor.py", config={})


def test_a_bad_predict_signature_fails_before_the_constructor_runs(tmp_path: Path) -> None:
    marker = tmp_path / "constructed"
    project = write(
        tmp_path,
        f"""
class PythonPredictor:
    def __init__(self, config):
        open({str(marker)!r}, "w").close()

    def predict(self, payload, model):
        pass
""",
    )
    with pytest.raises(PredictorLoadError, match="'model'"):
        load_predictor(project_dir=project, path="predictor.py", config={})
    assert not marker.exists()


def test_syntax_error_shows_the_file_and_line(tmp_path: Path) -> None:
    project = write(tmp_path, "x = 1\ndef broken(:\n    pass\n")
    with pytest.raises(PredictorLoadError) as caught:
        load_predictor(project_dir=project, path="predictor.py", config={})
    message = str(caught.value)
    assert message.startswith("importing predictor.py failed:")
    assert "line 2" in message and "SyntaxError" in message
    assert "importlib" not in message


def test_import_error_shows_the_users_traceback_only(tmp_path: Path) -> None:
    project = write(tmp_path, "import json\n\nraise RuntimeError('no model file')\n")
    with pytest.raises(PredictorLoadError) as caught:
        load_predictor(project_dir=project, path="predictor.py", config={})
    message = str(caught.value)
    assert 'predictor.py", line 3, in <module>' in message
    assert "RuntimeError: no model file" in message
    assert "importlib" not in message and "modelport" not in message.split("\n", 1)[1]


def test_init_failure_shows_the_users_traceback(tmp_path: Path) -> None:
    project = write(
        tmp_path,
        """
class PythonPredictor:
    def __init__(self, config):
        self.model = load(config["path"])

    def predict(self, payload):
        pass

def load(path):
    raise FileNotFoundError(path)
""",
    )
    with pytest.raises(PredictorLoadError) as caught:
        load_predictor(project_dir=project, path="predictor.py", config={"path": "model.pkl"})
    message = str(caught.value)
    assert message.startswith("PythonPredictor.__init__ in predictor.py raised:")
    assert "in __init__" in message and "in load" in message
    assert "FileNotFoundError: model.pkl" in message
    assert "runtime/predictor.py" not in message


def test_module_is_registered_under_its_name_unless_taken(tmp_path: Path) -> None:
    project = write(tmp_path, "class PythonPredictor:\n    def predict(self): ...\n", name="json.py")
    predictor = load_predictor(project_dir=project, path="json.py", config={})
    assert type(predictor.instance).__module__ == "modelport_predictor"
    assert sys.modules["json"].dumps({}) == "{}"  # the standard json module is untouched

    project2 = tmp_path / "other"
    project2.mkdir()
    write(project2, "class PythonPredictor:\n    def predict(self): ...\n", name="my_model_file.py")
    predictor2 = load_predictor(project_dir=project2, path="my_model_file.py", config={})
    assert type(predictor2.instance).__module__ == "my_model_file"
    assert sys.modules["my_model_file"].PythonPredictor is type(predictor2.instance)


def test_user_traceback_skips_runtime_frames() -> None:
    def user_code() -> None:
        raise ValueError("bad input")

    try:
        user_code()
    except ValueError as exc:
        text = user_traceback(exc)
    assert text.startswith("Traceback (most recent call last):")
    assert "in user_code" in text and text.endswith("ValueError: bad input")
