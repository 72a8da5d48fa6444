"""One JSON schema family for the documents the tools write: real JSON Schema (draft 2020-12)
documents, an environment block in each, the tools' validator agreeing with ``jsonschema`` on
good and broken documents, and the git commit of gpuconv itself (never of a surrounding
repository)."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import jsonschema
import pytest
from documents import check_document

from gpuconv.tools import bench, bench_kernels, bench_step, check, evaluate, predict, profile, report, train
from gpuconv.tools.harness import schema_errors

DOCUMENTS = {"train": train.METRICS_SCHEMA, "check": check.CHECK_SCHEMA, "bench": bench.BENCH_SCHEMA,
             "profile": profile.PROFILE_SCHEMA, "eval": evaluate.EVAL_SCHEMA,
             "predict": predict.PREDICT_SCHEMA}
SCHEMAS = {**DOCUMENTS, "check-set": check.CHECK_SET_SCHEMA, "bench row": bench_kernels.ROW_SCHEMA,
           "bench step": bench_step.STEP_SCHEMA, "profile row": profile.ROW_SCHEMA,
           "environment": report.ENVIRONMENT_SCHEMA}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_schema_is_a_valid_draft_2020_12_schema(name):
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_document_names_its_schema_and_carries_the_environment(name):
    schema = DOCUMENTS[name]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert re.fullmatch(rf"gpuconv-{name}/\d+", schema["$id"])
    assert schema["properties"]["schema"] == {"type": "string", "const": schema["$id"]}
    assert schema["properties"]["environment"] is report.ENVIRONMENT_SCHEMA
    assert {"schema", "environment"} <= set(schema["required"])


# ---- the tools' validator and jsonschema agree ----------------------------------------------------
def example(schema: Dict[str, Any]) -> Any:
    """The smallest document that follows ``schema`` (the keywords the harness uses)."""
    if "const" in schema:
        return schema["const"]
    kind = schema["type"][0] if isinstance(schema["type"], list) else schema["type"]
    if kind == "object":
        return {k: example(schema["properties"][k]) for k in schema.get("required", ())}
    if kind == "array":
        return [example(schema["items"])] if "items" in schema else []
    return {"string": "s", "integer": 1, "number": 0.5, "boolean": True, "null": None}[kind]


def mutations(doc: Any, schema: Dict[str, Any], path: Tuple = ()) -> Iterator[Tuple[Tuple, Any]]:
    """(path, broken value) pairs, each breaking ``doc`` at one place: a value of the wrong type, a
    number out of range, a missing key."""
    kinds = schema.get("type", [])
    kinds = kinds if isinstance(kinds, list) else [kinds]
    for wrong in ("text", 3, 2.5, True, None, [], {}):
        yield path, wrong
    if "minimum" in schema:
        yield path, schema["minimum"] - 1
    if "maximum" in schema:
        yield path, schema["maximum"] + 1
    if "object" in kinds and isinstance(doc, dict):
        for key in schema.get("required", ()):
            yield path, {k: v for k, v in doc.items() if k != key}
        for key, sub in schema.get("properties", {}).items():
            if key in doc:
                yield from mutations(doc[key], sub, path + (key,))
    if "array" in kinds and isinstance(doc, list) and doc:
        yield from mutations(doc[0], schema["items"], path + (0,))


def replaced(doc: Any, path: Tuple, value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_tools_validator_agrees_with_jsonschema(name):
    schema = SCHEMAS[name]
    good = example(schema)
    check_document(good, schema)
    validator = jsonschema.Draft202012Validator(schema)
    disagreements: List[str] = []
    n = 0
    for path, value in mutations(good, schema):
        doc = replaced(good, path, value)
        ours, theirs = not schema_errors(doc, schema), validator.is_valid(doc)
        n += 1
        if ours != theirs:
            disagreements.append(f"{path} = {value!r}: ours {ours}, jsonschema {theirs}")
    assert n > 20 and disagreements == []


# ---- the environment block ------------------------------------------------------------------------
def test_environment_names_versions_gpu_and_commit():
    env = report.environment()
    check_document(env, report.ENVIRONMENT_SCHEMA)
    assert env["gpuconv"] and env["numpy"] and env["python"]
    for module in ("torch", "cupy"):
        try:
            __import__(module)
        except ImportError:
            continue
        assert env[module] == __import__(module).__version__


def test_installed_version_reads_without_importing(monkeypatch):
    import importlib.metadata
    import sys
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    try:
        expected = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        expected = None
    assert report.installed_version("torch") == expected
    assert "torch" not in sys.modules
    assert report.installed_version("no_such_module_here") is None


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
                               "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(cwd)}).stdout.strip()


def make_repo(root: Path, files: Dict[str, str]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "test")
    return git(root, "rev-parse", "HEAD")


@needs_git
def test_commit_of_a_gpuconv_checkout_is_reported(tmp_path):
    head = make_repo(tmp_path / "src", {"setup.cfg": "[metadata]\nname = gpuconv\n",
                                        "gpuconv/__init__.py": ""})
    assert report.gpuconv_commit(tmp_path / "src" / "gpuconv") == head


@needs_git
def test_an_install_inside_another_repository_reports_no_commit(tmp_path):
    # a virtual environment inside some project's checkout: that project's commit is not gpuconv's
    site = "venv/lib/python3/site-packages"
    make_repo(tmp_path / "project", {"setup.cfg": "[metadata]\nname = other\n",
                                     f"{site}/gpuconv/__init__.py": "", "README": "x"})
    assert report.gpuconv_commit(tmp_path / "project" / site / "gpuconv") is None
    # even a project whose top level has a gpuconv/ folder but whose setup.cfg is not gpuconv's
    make_repo(tmp_path / "other", {"setup.cfg": "[metadata]\nname = other\n", "gpuconv/__init__.py": ""})
    assert report.gpuconv_commit(tmp_path / "other" / "gpuconv") is None
    # and gpuconv's files one level down in someone else's work tree
    make_repo(tmp_path / "outer", {"vendor/setup.cfg": "[metadata]\nname = gpuconv\n",
                                   "vendor/gpuconv/__init__.py": ""})
    assert report.gpuconv_commit(tmp_path / "outer" / "vendor" / "gpuconv") is None


def test_a_copy_outside_any_repository_reports_no_commit(tmp_path):
    (tmp_path / "gpuconv").mkdir()
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = gpuconv\n")
    assert report.gpuconv_commit(tmp_path / "gpuconv") is None


def test_this_checkout_reports_its_own_head():
    here = Path(report.__file__).resolve().parents[2]
    if shutil.which("git") is None or not (here / "setup.cfg").is_file():
        pytest.skip("not running from a git checkout of gpuconv")
    proc = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("not running from a git checkout of gpuconv")
    assert report.environment()["git_commit"] == proc.stdout.strip()
