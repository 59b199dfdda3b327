"""Unit tests of spec.load: finding and parsing the spec file, all-at-once errors, project files and "
"revisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.errors import NotFoundError, UserInputError
from modelport.spec.errors import SpecError, SpecProblem
from modelport.spec.load import Project, load_project, parse_apis, project_files
from tests.support import IRIS_SPEC, write_files

SPEC = (
    IRIS_SPEC
    + """\
- name: sleep
  kind: RealtimeAPI
  predictor:
    type: python
    path: sleep.py
"""
)


def project(root: Path, spec: str = SPEC, **files: str) -> Path:
    return write_files(
        root, {"modelport.yaml": spec, "predictor.py": "# iris\n", "sleep.py": "# sleep\n", **files}
    )


def load_error(path: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_project(path)
    assert isinstance(caught.value, UserInputError)
    return str(caught.value)


# --- finding the spec file ------------------------------------------------------------------------


def test_loads_every_api_with_defaults_resolved(tmp_path: Path) -> None:
    loaded = load_project(project(tmp_path))
    assert loaded.root == tmp_path.absolute()
    assert loaded.spec_file == tmp_path.absolute() / "modelport.yaml"
    assert [api.name for api in loaded.apis] == ["iris", "sleep"]
    assert loaded.api("iris").predictor.config == {"threshold": 0.5}
    assert loaded.api("sleep").networking.endpoint == "/sleep"
    assert len(loaded.files_digest) == 64


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        (["modelport.yaml", "cortex.yaml"], "modelport.yaml"),
        (["modelport.yml", "cortex.yaml"], "modelport.yml"),
        (["cortex.yaml"], "cortex.yaml"),
        (["cortex.yml"], "cortex.yml"),
    ],
)
def test_spec_file_precedence_and_cortex_fallback(tmp_path: Path, present: list[str], chosen: str) -> None:
    write_files(tmp_path, {"predictor.py": "", "sleep.py": ""} | dict.fromkeys(present, SPEC))
    loaded = load_project(tmp_path)
    assert loaded.spec_file.name == chosen
    assert Path(chosen) not in project_files(loaded.root, spec_file=loaded.spec_file)


def test_path_may_name_the_yaml_file(tmp_path: Path) -> None:
    write_files(tmp_path, {"app/api.yaml": SPEC, "app/predictor.py": "", "app/sleep.py": ""})
    loaded = load_project(tmp_path / "app" / "api.yaml")
    assert loaded.root == (tmp_path / "app").absolute()
    assert loaded.spec_file.name == "api.yaml"
    assert project_files(loaded.root, spec_file=loaded.spec_file) == [Path("predictor.py"), Path("sleep.py")]


def test_missing_spec_file_says_what_was_looked_for(tmp_path: Path) -> None:
    assert load_error(tmp_path) == (
        f"{tmp_path}: no spec file found: looked for modelport.yaml, modelport.yml, cortex.yaml, cortex.yml"
    )
    assert load_error(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such file or directory"


# --- the document's shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "the file is empty: list your APIs, starting with '- name: iris-classifier' followed by its "
            "kind and "
            "predictor",
        ),
        (
            "# only a comment\n",
            "the file is empty: list your APIs, starting with '- name: iris-classifier' "
            "followed by its kind and predictor",
        ),
        (
            "[]\n",
            "no APIs defined: add one, starting with '- name: iris-classifier' followed by its kind and "
            "predictor",
        ),
        (
            "name: iris\nkind: RealtimeAPI\n",
            "expected a list of APIs, got a single mapping: wrap it in a list: start the line with '- '",
        ),
        ("iris\n", "expected a list of APIs (each starting with '- '), got 'iris'"),
        (
            "- name: iris\n  kind: [RealtimeAPI\n",
            "invalid YAML at line 3, column 1: while parsing a flow sequence "
            "expected ',' or ']', but got '<stream end>'",
        ),
        (
            "- name: iris\n   kind: x: y\n",
            "invalid YAML at line 2, column 8: mapping values are not allowed here",
        ),
        (
            "- name: a\n  name: b\n",
            "invalid YAML at line 2, column 3: the key 'name' appears twice in one mapping: keep one",
        ),
    ],
)
def test_document_shape_errors(tmp_path: Path, text: str, message: str) -> None:
    assert load_error(project(tmp_path, text)) == f"modelport.yaml: {message}"


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = (
        "- &base\n  name: iris\n  kind: RealtimeAPI\n  predictor: {type: python, path: predictor.py}\n"
        "- <<: *base\n  name: iris-2\n"
    )
    assert [api.name for api in load_project(project(tmp_path, text)).apis] == ["iris", "iris-2"]


def test_every_problem_in_every_api_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
- name: iris
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py, threads_per_proces: 2}
  autoscaling: {min_replicas: 2, max_replicas: 1, window: 5 minutes}
- not an api
- name: iris
  kind: TrafficSplitter
  predictor: {type: python, path: missing.py, processes_per_replica: two}
  compute: {mem: 1 gig}
"""
    with pytest.raises(SpecError) as caught:
        load_project(project(tmp_path, text))
    assert str(caught.value).splitlines() == [
        "modelport.yaml: [0].predictor.threads_per_proces: unknown field 'threads_per_proces': did you mean "
        "'threads_per_process'?",
        "modelport.yaml: [0].autoscaling.max_replicas: must be >= min_replicas (2), got 1",
        "modelport.yaml: [0].autoscaling.window: expected a duration like 30s, 5m, 1h30m or 250ms (or a "
        "number "
        "of seconds), got '5 minutes'",
        "modelport.yaml: [1]: expected a mapping of API fields (name, kind, predictor, ...), got 'not an "
        "api'",
        "modelport.yaml: [2].kind: kind TrafficSplitter is not supported yet by this version; supported: "
        "RealtimeAPI, BatchAPI, AsyncAPI, TaskAPI",
        "modelport.yaml: [2].predictor.processes_per_replica: expected an integer, got 'two'",
        "modelport.yaml: [2].compute.mem: expected a memory amount like 512Mi, 1Gi or 500M (or a number of "
        "bytes), got '1 gig'",
        "modelport.yaml: [2].name: duplicate name 'iris', also used by [0]: API names must be unique",
    ]
    assert caught.value.problems[1] == SpecProblem(
        file="modelport.yaml",
        path="[0].autoscaling.max_replicas",
        message="must be >= min_replicas (2), got 1",
    )


def test_duplicate_endpoints_and_missing_files(tmp_path: Path) -> None:
    text = """\
- {name: a, kind: RealtimeAPI, predictor: {type: python, path: predictor.py}, networking: {endpoint: /x}}
- {name: b, kind: RealtimeAPI, predictor: {type: python, path: gone.py, python_path: lib}}
- {name: c, kind: RealtimeAPI, predictor: {type: python, path: predictor.py}, networking: {endpoint: /x}}
"""
    root = project(tmp_path, text).absolute()
    assert load_error(root).splitlines() == [
        f"modelport.yaml: [1].predictor.path: file 'gone.py' not found in the project directory {root}",
        "modelport.yaml: [1].predictor.python_path: directory 'lib' not found in the project directory "
        f"{root}",
        "modelport.yaml: [2].networking.endpoint: endpoint '/x' is also used by [0] ('a'): give each API "
        "its own",
    ]


def test_an_ignored_predictor_file_is_an_error(tmp_path: Path) -> None:
    project(tmp_path, **{".modelportignore": "sleep.py\n"})
    assert load_error(tmp_path) == (
        "modelport.yaml: [1].predictor.path: file 'sleep.py' is excluded from the project (by an ignore "
        "rule, or as a dotfile, cache or compiled file): remove the rule that matches it"
    )


def test_parse_apis_is_pure(tmp_path: Path) -> None:
    specs = parse_apis(SPEC, file="modelport.yaml")  # no project directory: files are not checked
    assert [spec.name for spec in specs] == ["iris", "sleep"]
    with pytest.raises(SpecError, match=r"^api.yaml: \[0\]\.kind: required"):
        parse_apis("- {name: a, predictor: {type: python, path: a.py}}", file="api.yaml")


def test_cortex_0_20_project_loads_unchanged(tmp_path: Path) -> None:
    cortex = """\
- name: iris-classifier
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    config:
      bucket: cortex-examples
      key: sklearn/iris-classifier/model.pkl
  monitoring:
    model_type: classification
  compute:
    cpu: 0.2
    mem: 200Mi
  networking:
    local_port: 8888
"""
    loaded = load_project(write_files(tmp_path, {"cortex.yaml": cortex, "predictor.py": ""}))
    spec = loaded.api("iris-classifier")
    assert spec.compute.mem == 200 * 2**20
    assert spec.monitoring is not None and spec.monitoring.model_type == "classification"
    with pytest.raises(NotFoundError, match="no API named 'iris'"):
        loaded.api("iris")


# --- project files and ignore rules ---------------------------------------------------------------


def test_project_files_skip_dotfiles_caches_and_the_spec(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "modelport.yaml": SPEC,
            "predictor.py": "",
            "pkg/__init__.py": "",
            "pkg/__pycache__/x.cpython-311.pyc": b"\0",
            "pkg/mod.pyc": b"\0",
            "pkg/mod.pyo": b"\0",
            "native.pyd": b"\0",
            ".env": "A=1",
            ".git/HEAD": "ref",
            "sub/.hidden/file.txt": "",
            "sub/data.json": "{}",
        },
    )
    assert project_files(tmp_path, spec_file=tmp_path / "modelport.yaml") == [
        Path("pkg/__init__.py"),
        Path("predictor.py"),
        Path("sub/data.json"),
    ]


FILES = [
    "predictor.py",
    "model.pkl",
    "logs/run.log",
    "debug.log",
    "data/raw/a.csv",
    "data/raw/keep.csv",
    "src/data/b.csv",
    "src/build/out.bin",
    "build/out.bin",
    "docs/a/b/c.md",
    "docs/readme.md",
    "notes#1.txt",
    "!important.txt",
]


@pytest.mark.parametrize(
    ("rules", "excluded"),
    [
        ("", []),
        ("# comment\n\n*.log\n", ["debug.log", "logs/run.log"]),
        ("logs/\n", ["logs/run.log"]),
        ("*.log\n!debug.log\n", ["logs/run.log"]),
        ("/build\n", ["build/out.bin"]),
        ("build/\n", ["build/out.bin", "src/build/out.bin"]),
        ("data/\n", ["data/raw/a.csv", "data/raw/keep.csv", "src/data/b.csv"]),
        (
            "/data/\n!data/raw/keep.csv\n",
            ["data/raw/a.csv", "data/raw/keep.csv"],
        ),  # cannot re-include, as git
        ("data/raw/*\n!data/raw/keep.csv\n", ["data/raw/a.csv"]),
        ("**/*.csv\n", ["data/raw/a.csv", "data/raw/keep.csv", "src/data/b.csv"]),
        ("docs/**/*.md\n", ["docs/a/b/c.md", "docs/readme.md"]),
        ("docs/**\n", ["docs/a/b/c.md", "docs/readme.md"]),
        ("model.p?l\n", ["model.pkl"]),
        ("[dm]*.log\n", ["debug.log"]),
        ("[!d]*.pkl\n", ["model.pkl"]),
        ("\\#*\nnotes\\#1.txt\n\\!important.txt\n", ["!important.txt", "notes#1.txt"]),
        ("predictor.py\n", ["predictor.py"]),
    ],
)
def test_ignore_rules(tmp_path: Path, rules: str, excluded: list[str]) -> None:
    write_files(tmp_path, {"modelport.yaml": SPEC, ".modelportignore": rules} | dict.fromkeys(FILES, "x"))
    kept = {path.as_posix() for path in project_files(tmp_path, spec_file=tmp_path / "modelport.yaml")}
    assert kept == set(FILES) - set(excluded)


def test_modelportignore_rules_come_after_cortexignore(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {"modelport.yaml": SPEC, ".cortexignore": "*.pkl\n*.log\n", ".modelportignore": "!model.pkl\n"}
        | dict.fromkeys(FILES, "x"),
    )
    kept = {path.as_posix() for path in project_files(tmp_path, spec_file=Path("modelport.yaml"))}
    assert "model.pkl" in kept and "debug.log" not in kept


def test_projects_over_512_mib_are_refused(tmp_path: Path) -> None:
    project(tmp_path)
    with (tmp_path / "weights.bin").open("wb") as sparse:
        sparse.truncate(513 * 2**20)  # sparse: costs no disk
    message = load_error(tmp_path)
    assert message == (
        f"{tmp_path.absolute()}: the project's files total 513.0 MiB, over the 512.0 MiB limit (largest: "
        "weights.bin 513.0 MiB, sleep.py 0.0 MiB, predictor.py 0.0 MiB): list data sets and model weights in "
        ".modelportignore"
    )
    write_files(tmp_path, {".modelportignore": "*.bin\n"})
    assert load_project(tmp_path).apis


# --- revisions ------------------------------------------------------------------------------------


def revisions(root: Path) -> dict[str, str]:
    loaded: Project = load_project(root)
    return {api.name: loaded.revision(api.name) for api in loaded.apis}


def test_revision_is_stable_and_short(tmp_path: Path) -> None:
    first = revisions(project(tmp_path))
    assert first == revisions(tmp_path)
    assert all(len(rev) == 12 and int(rev, 16) >= 0 for rev in first.values())
    assert first["iris"] != first["sleep"]


def test_revision_follows_files_and_this_apis_spec_only(tmp_path: Path) -> None:
    before = revisions(project(tmp_path, **{".modelportignore": "scratch/\n"}))

    write_files(tmp_path, {"scratch/notes.txt": "ignored", ".editorconfig": "dotfile", "x.pyc": "compiled"})
    assert revisions(tmp_path) == before  # ignored and excluded files do not count

    write_files(tmp_path, {"modelport.yaml": SPEC.replace("threshold: 0.5", "threshold: 0.7")})
    changed_config = revisions(tmp_path)
    assert changed_config["iris"] != before["iris"]
    assert changed_config["sleep"] == before["sleep"]  # another API's spec changed, not this one's

    write_files(tmp_path, {"sleep.py": "# sleep faster\n"})
    changed_file = revisions(tmp_path)
    assert changed_file["iris"] != changed_config["iris"]  # any project file changes every API's revision
    assert changed_file["sleep"] != changed_config["sleep"]

    write_files(tmp_path, {"modelport.yaml": SPEC, "sleep.py": "# sleep\n"})
    assert revisions(tmp_path) == before  # back to the same inputs: back to the same revisions


def test_revision_ignores_spec_formatting_and_key_order(tmp_path: Path) -> None:
    before = revisions(project(tmp_path))
    reordered = """\
- kind: RealtimeAPI
  predictor: {path: predictor.py, type: python, config: {threshold: 0.5}}
  name: iris   # same API, written differently
- {name: sleep, kind: RealtimeAPI, predictor: {type: python, path: sleep.py}}
"""
    write_files(tmp_path, {"modelport.yaml": reordered})
    assert revisions(tmp_path) == before
