"""One source per run parameter: the label delay and the alert threshold have one default each.

The scan reads every Python file and CloudFormation template of the repository
(tests, docs and notebooks aside) and reports each literal 7 given as a label
delay and each literal 0.5 given as an alert threshold: an assignment, a
parameter or field default, an argparse/pipeline-parameter default, a keyword
argument, a dict entry, an ``os.environ.get`` fallback, a template parameter or
Lambda environment value. Exactly one may exist: the constant in
``pipelines/core/params.py``.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cfnlint.decode import decode

from pipelines.core.params import (
    DEFAULT_ALERT_THRESHOLD,
    DEFAULT_LABEL_DELAY_DAYS,
    ModelParameters,
    ParameterError,
    check_alert_threshold,
    check_label_delay_days,
)

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {"tests", "docs", "notebooks", "build", "dist"}
HOME = "pipelines/core/params.py"


def _kind(name: str, value: object) -> str | None:
    """"delay"/"threshold" when ``name = value`` sets a label delay of 7 / a threshold of 0.5."""
    key = re.sub(r"[^a-z]", "", name.lower())
    if "labeldelay" in key and value in (DEFAULT_LABEL_DELAY_DAYS, str(DEFAULT_LABEL_DELAY_DAYS)):
        return "delay"
    if ("alertthreshold" in key or key == "threshold") and value in (
        DEFAULT_ALERT_THRESHOLD, str(DEFAULT_ALERT_THRESHOLD)
    ):
        return "threshold"
    return None


def _constant(node: ast.AST | None) -> object:
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        return node.value
    return None


def _first_string(call: ast.Call) -> str:
    for arg in call.args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return ""


def _named_literals(tree: ast.AST) -> Iterator[tuple[str, object, int]]:
    """(name, literal value, line) for each way a literal can be given a name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = getattr(target, "id", None) or getattr(target, "attr", "")
                yield name, _constant(node.value), node.lineno
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            positional = node.args.posonlyargs + node.args.args
            pairs = list(zip(positional[len(positional) - len(node.args.defaults):],
                             node.args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults,
                                             strict=True) if d is not None]
            for arg, default in pairs:
                yield arg.arg, _constant(default), node.lineno
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                name = keyword.arg or ""
                if name in ("default", "default_value"):
                    name = _first_string(node)  # "--label-delay-days", "AlertThreshold"
                yield name, _constant(keyword.value), node.lineno
            if isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv") \
                    and len(node.args) == 2:  # os.environ.get("ALERT_THRESHOLD", "0.5")
                yield str(_constant(node.args[0]) or ""), _constant(node.args[1]), node.lineno
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                yield str(_constant(key) or ""), _constant(value), node.lineno


def _python_files() -> Iterator[Path]:
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                   and not d.endswith(".egg-info") and d != "__pycache__"]
        yield from (Path(folder) / f for f in files if f.endswith(".py"))


def _template_literals(path: Path) -> Iterator[tuple[str, object, int]]:
    parsed, _ = decode(str(path))
    for name, parameter in (parsed.get("Parameters") or {}).items():
        yield name, parameter.get("Default"), 0
    for resource in (parsed.get("Resources") or {}).values():
        variables = ((resource.get("Properties") or {}).get("Environment") or {}).get(
            "Variables") or {}
        for name, value in variables.items():
            yield name, value, 0


def defaults_found() -> dict[str, list[str]]:
    """kind -> ["path:line name", ...] over the repository."""
    found: dict[str, list[str]] = {"delay": [], "threshold": []}
    sources = [(p, _named_literals(ast.parse(p.read_text(encoding="utf-8"))))
               for p in _python_files()]
    sources += [(p, _template_literals(p)) for p in sorted((ROOT / "infra").glob("*.yaml"))]
    for path, literals in sources:
        for name, value, line in literals:
            kind = _kind(name, value)
            if kind:
                found[kind].append(f"{path.relative_to(ROOT).as_posix()}:{line} {name}")
    return found


def test_the_label_delay_and_alert_threshold_defaults_are_each_defined_once():
    found = defaults_found()
    assert [entry.split(":")[0] + " " + entry.split(" ")[1] for entry in found["delay"]] == [
        f"{HOME} DEFAULT_LABEL_DELAY_DAYS"], found["delay"]
    assert [entry.split(":")[0] + " " + entry.split(" ")[1] for entry in found["threshold"]] == [
        f"{HOME} DEFAULT_ALERT_THRESHOLD"], found["threshold"]


def test_the_scan_sees_each_way_a_default_can_be_copied():
    """Guard against a scan that silently finds nothing (it would pass everything)."""
    source = '''
LABEL_DELAY_DAYS = 7
def score(threshold: float = 0.5, *, label_delay_days=7): ...
parser.add_argument("--label-delay-days", type=int, default=7)
ParameterFloat("AlertThreshold", default_value=0.5)
build(label_delay_days=7)
policy = {"alert_threshold": 0.5}
os.environ.get("ALERT_THRESHOLD", "0.5")
'''
    kinds = [_kind(name, value) for name, value, _ in _named_literals(ast.parse(source))]
    assert kinds.count("delay") == 4 and kinds.count("threshold") == 4


@pytest.mark.parametrize("value", [-1, 1.5, "seven", True, None])
def test_the_label_delay_validator_names_the_source(value):
    with pytest.raises(ParameterError, match="--label-delay-days must be"):
        check_label_delay_days(value, "--label-delay-days")


@pytest.mark.parametrize("value", [-0.1, 1.01, float("nan"), "high", True, None])
def test_the_alert_threshold_validator_names_the_source(value):
    with pytest.raises(ParameterError, match=r"model v3 alert_threshold must be a number in"):
        check_alert_threshold(value, "model v3 alert_threshold")


def test_model_parameters_round_trip_through_package_metadata():
    parameters = ModelParameters(label_delay_days=3, feature_set_version="abc",
                                 alert_threshold=0.35)
    metadata = parameters.as_metadata()
    assert all(isinstance(v, str) for v in metadata.values())  # SageMaker's rule
    assert ModelParameters.from_metadata(metadata, "package 1") == parameters
    # What the Register step's Join(JsonGet) renders: str() of the JSON numbers.
    rendered = {"label_delay_days": "3", "feature_set_version": "abc", "alert_threshold": "0.35"}
    assert ModelParameters.from_metadata(rendered, "package 1") == parameters


def test_a_package_without_its_run_parameters_is_a_clear_error():
    with pytest.raises(ParameterError, match=r"package 7 CustomerMetadataProperties lack "
                                             r"\['label_delay_days', 'alert_threshold'\]"):
        ModelParameters.from_metadata({"feature_set_version": "abc"}, "package 7")
    with pytest.raises(ParameterError, match="package 7 label_delay_days must be >= 0"):
        ModelParameters.from_metadata(
            {"label_delay_days": "-2", "feature_set_version": "abc", "alert_threshold": "0.5"},
            "package 7")
