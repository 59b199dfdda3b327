"""Reading a project: find and parse its spec file, validate every API, and hash the project's files.

Called by the CLI/client on `modelport deploy PATH`; the only I/O in `spec` (reading files, never writing).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from modelport.errors import NotFoundError
from modelport.spec.errors import SpecError, SpecProblem, describe, problems_from_validation
from modelport.spec.model import ApiSpec
from modelport.types import Revision

__all__ = [
    "IGNORE_FILE_NAMES",
    "MAX_PROJECT_BYTES",
    "SPEC_FILE_NAMES",
    "Project",
    "SpecError",
    "SpecProblem",
    "files_digest",
    "find_spec_file",
    "load_project",
    "parse_apis",
    "project_files",
]

SPEC_FILE_NAMES = ("modelport.yaml", "modelport.yml", "cortex.yaml", "cortex.yml")
# Both are read when present; .modelportignore comes last so that its rules win.
IGNORE_FILE_NAMES = (".cortexignore", ".modelportignore")
MAX_PROJECT_BYTES = 512 * 2**20  # Cortex's limit on a project's upload
_COMPILED_SUFFIXES = (".pyc", ".pyo", ".pyd")
_EXAMPLE = "'- name: iris-classifier' followed by its kind and predictor"


@dataclass(frozen=True, slots=True)
class Project:
    """A loaded project: its APIs, valid and resolved, and a digest of the files they run with."""

    root: Path
    spec_file: Path
    apis: tuple[ApiSpec, ...]
    files_digest: str

    def api(self, name: str) -> ApiSpec:
        for spec in self.apis:
            if spec.name == name:
                return spec
        names = ", ".join(spec.name for spec in self.apis)
        raise NotFoundError(f"no API named {name!r} in {self.spec_file}; its APIs: {names}")

    def revision(self, api_name: str) -> Revision:
        """12 hex chars that change when this API's resolved spec or any project file changes."""
        spec_json = json.dumps(
            self.api(api_name).model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        )
        digest = hashlib.sha256(f"{spec_json}\n{self.files_digest}".encode())
        return Revision(digest.hexdigest()[:12])


def load_project(path: Path) -> Project:
    """Load the project at `path`: a directory holding modelport.yaml (or cortex.yaml), or the YAML file."""
    spec_file = find_spec_file(Path(path))
    root = spec_file.parent
    valid, problems = _validate(_read_text(spec_file), file=spec_file.name)
    files = project_files(root, spec_file=spec_file)
    listed = set(files)
    for index, spec in valid:
        problems += _missing_files(spec, index=index, file=spec_file.name, root=root, listed=listed)
    if problems:
        raise SpecError(sorted(problems, key=_api_index))  # stable: each API's problems stay in field order
    apis = tuple(spec for _, spec in valid)
    return Project(root=root, spec_file=spec_file, apis=apis, files_digest=files_digest(root, files))


def find_spec_file(path: Path) -> Path:
    if path.is_file():
        return path.absolute()
    if not path.is_dir():
        raise SpecError([SpecProblem(str(path), "", "no such file or directory")])
    for name in SPEC_FILE_NAMES:
        if (path / name).is_file():
            return (path / name).absolute()
    looked_for = ", ".join(SPEC_FILE_NAMES)
    raise SpecError([SpecProblem(str(path), "", f"no spec file found: looked for {looked_for}")])


def parse_apis(text: str, *, file: str) -> tuple[ApiSpec, ...]:
    """Every API of a spec file's text, validated; SpecError lists every problem in every API at once.

    Pure: unlike `load_project` it does not check that predictor files exist.
    """
    valid, problems = _validate(text, file=file)
    if problems:
        raise SpecError(sorted(problems, key=_api_index))
    return tuple(spec for _, spec in valid)


def _validate(text: str, *, file: str) -> tuple[list[tuple[int, ApiSpec]], list[SpecProblem]]:
    """The valid APIs with their indices, and the problems of the others; SpecError if not a list of APIs."""
    document = _parse_yaml(text, file=file)
    if document is None:
        raise SpecError(
            [SpecProblem(file, "", f"the file is empty: list your APIs, starting with {_EXAMPLE}")]
        )
    if isinstance(document, dict):
        message = "expected a list of APIs, got a single mapping: wrap it in a list: start the line with '- '"
        raise SpecError([SpecProblem(file, "", message)])
    if not isinstance(document, list):
        message = f"expected a list of APIs (each starting with '- '), got {describe(document)}"
        raise SpecError([SpecProblem(file, "", message)])
    if not document:
        raise SpecError([SpecProblem(file, "", f"no APIs defined: add one, starting with {_EXAMPLE}")])

    problems: list[SpecProblem] = []
    valid: list[tuple[int, ApiSpec]] = []
    for index, entry in enumerate(document):
        if not isinstance(entry, dict):
            message = f"expected a mapping of API fields (name, kind, predictor, ...), got {describe(entry)}"
            problems.append(SpecProblem(file, f"[{index}]", message))
            continue
        try:
            spec = ApiSpec.model_validate(entry)
        except ValidationError as exc:
            problems += problems_from_validation(exc, file=file, prefix=(index,))
            continue
        valid.append((index, spec))
    problems += _duplicate_names(document, file=file)
    problems += _duplicate_endpoints(valid, file=file)
    return valid, problems


def project_files(root: Path, *, spec_file: Path) -> list[Path]:
    """Sorted paths, relative to `root`, of the files that make a revision (see the module's ignore rules)."""
    rules = _IgnoreRules.read(root)
    skipped = spec_file.relative_to(root) if spec_file.is_absolute() else spec_file
    found: list[Path] = []
    # Not following symlinked directories avoids cycles; symlinked files are hashed by content.
    for current, dirnames, filenames in os.walk(root):
        relative_dir = Path(current).relative_to(root)
        dirnames[:] = [
            name
            for name in dirnames
            if not name.startswith(".")
            and name != "__pycache__"
            and not rules.ignored((relative_dir / name).as_posix(), is_dir=True)
        ]
        for name in filenames:
            relative = relative_dir / name
            if (
                name.startswith(".")
                or name.endswith(_COMPILED_SUFFIXES)
                or relative == skipped
                or rules.ignored(relative.as_posix(), is_dir=False)
                or not (root / relative).is_file()  # sockets, broken links
            ):
                continue
            found.append(relative)
    return sorted(found, key=lambda path: path.as_posix())


def files_digest(root: Path, files: Sequence[Path]) -> str:
    """sha256 over each file's relative path and content hash; SpecError past MAX_PROJECT_BYTES."""
    sizes = {path: (root / path).stat().st_size for path in files}
    total = sum(sizes.values())
    if total > MAX_PROJECT_BYTES:
        largest = sorted(files, key=lambda path: -sizes[path])[:3]
        shown = ", ".join(f"{path.as_posix()} {_mib(sizes[path])}" for path in largest)
        message = (
            f"the project's files total {_mib(total)}, over the {_mib(MAX_PROJECT_BYTES)} limit "
            f"(largest: {shown}): list data sets and model weights in .modelportignore"
        )
        raise SpecError([SpecProblem(str(root), "", message)])
    digest = hashlib.sha256()
    for path in files:
        content = hashlib.sha256()
        with (root / path).open("rb") as stream:
            while chunk := stream.read(1 << 20):
                content.update(chunk)
        digest.update(path.as_posix().encode() + b"\0" + content.digest())
    return digest.hexdigest()


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def _api_index(problem: SpecProblem) -> int:
    match = re.match(r"\[(\d+)\]", problem.path)
    return int(match[1]) if match else -1


def _read_text(spec_file: Path) -> str:
    try:
        return spec_file.read_text(encoding="utf-8-sig")  # tolerates a BOM
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(spec_file.name, "", "not UTF-8 text: save the file as UTF-8")]) from None
    except OSError as exc:
        raise SpecError([SpecProblem(spec_file.name, "", f"cannot read the file: {exc.strerror}")]) from None


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML would keep the last silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Hashable, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} appears twice in one mapping: keep one", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, *, file: str) -> object:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise SpecError([SpecProblem(file, "", f"invalid YAML at {where}{what}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecProblem(file, "", f"invalid YAML: {exc}")]) from None


def _missing_files(
    spec: ApiSpec, *, index: int, file: str, root: Path, listed: set[Path]
) -> list[SpecProblem]:
    problems = []
    if not (root / spec.predictor.path).is_file():
        message = f"file {spec.predictor.path!r} not found in the project directory {root}"
        problems.append(SpecProblem(file, f"[{index}].predictor.path", message))
    elif Path(spec.predictor.path) not in listed:
        # Replicas run from a copy of the listed files: an excluded predictor would not be there.
        message = (
            f"file {spec.predictor.path!r} is excluded from the project (by an ignore rule, or as a dotfile, "
            "cache or compiled file): remove the rule that matches it"
        )
        problems.append(SpecProblem(file, f"[{index}].predictor.path", message))
    python_path = spec.predictor.python_path
    if python_path is not None and not (root / python_path).is_dir():
        message = f"directory {python_path!r} not found in the project directory {root}"
        problems.append(SpecProblem(file, f"[{index}].predictor.python_path", message))
    return problems


def _duplicate_names(document: list[object], *, file: str) -> list[SpecProblem]:
    first_index: dict[str, int] = {}
    problems = []
    for index, entry in enumerate(document):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        if name in first_index:
            message = f"duplicate name {name!r}, also used by [{first_index[name]}]: API names must be unique"
            problems.append(SpecProblem(file, f"[{index}].name", message))
        else:
            first_index[name] = index
    return problems


def _duplicate_endpoints(valid: list[tuple[int, ApiSpec]], *, file: str) -> list[SpecProblem]:
    owner: dict[str, tuple[int, str]] = {}
    problems = []
    for index, spec in valid:
        endpoint = spec.networking.endpoint
        if endpoint not in owner:
            owner[endpoint] = (index, spec.name)
        elif owner[endpoint][1] != spec.name:  # same name: already reported as a duplicate name
            first, first_name = owner[endpoint]
            message = (
                f"endpoint {endpoint!r} is also used by [{first}] ({first_name!r}): give each API its own"
            )
            problems.append(SpecProblem(file, f"[{index}].networking.endpoint", message))
    return problems


@dataclass(frozen=True, slots=True)
class _IgnoreRule:
    pattern: re.Pattern[str]
    negate: bool
    dir_only: bool


@dataclass(frozen=True, slots=True)
class _IgnoreRules:
    """The gitignore subset modelport honours, from the project root's .cortexignore and .modelportignore.

    Supported: `#` comments, blank lines, `*`, `?`, `[abc]`/`[!abc]`, `**/` / `/**/` / `/**`, a trailing `/`
    (directories only), a leading or inner `/` (anchored to the root, else matching at any depth), `!`
    negation (last match wins; a file inside an ignored directory cannot be re-included, as in git), and
    backslash escapes (`\\#`, `\\!`). Not supported: ignore files in subdirectories, escaped trailing spaces.
    """

    rules: tuple[_IgnoreRule, ...]

    @classmethod
    def read(cls, root: Path) -> _IgnoreRules:
        lines: list[str] = []
        for name in IGNORE_FILE_NAMES:
            if (root / name).is_file():
                lines += (root / name).read_text(encoding="utf-8", errors="replace").splitlines()
        return cls(tuple(rule for line in lines if (rule := _parse_rule(line)) is not None))

    def ignored(self, relative: str, *, is_dir: bool) -> bool:
        verdict = False
        for rule in self.rules:
            if (is_dir or not rule.dir_only) and rule.pattern.fullmatch(relative):
                verdict = not rule.negate
        return verdict


def _parse_rule(line: str) -> _IgnoreRule | None:
    line = line.rstrip()
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    line = line[1:] if negate else line
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    body = _translate(line.lstrip("/"))
    return _IgnoreRule(re.compile(body if anchored else f"(?:.*/)?{body}"), negate=negate, dir_only=dir_only)


def _translate(glob: str) -> str:
    """One gitignore glob as a regex over a relative POSIX path."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i) and (i == 0 or glob[i - 1] == "/"):
            out.append("(?:.*/)?")  # zero or more directories
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")  # everything inside
            i += 3
        elif glob[i] == "*":
            while i < len(glob) and glob[i] == "*":  # other runs of stars are one star
                i += 1
            out.append("[^/]*")
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and (end := glob.find("]", i + 2)) != -1:
            members = glob[i + 1 : end]
            negated = members.startswith(("!", "^"))
            members = members[1:] if negated else members
            out.append(f"[{'^/' if negated else ''}{members.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        elif glob[i] == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)
