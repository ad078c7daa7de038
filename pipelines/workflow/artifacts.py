"""Build every artifact the stacks reference, under the keys they reference.

``fraudops infra build --out DIR`` writes, for ``s3://<artifacts>/code/<version>/``:

* ``lambda.zip``: the four handlers and the ``pipelines`` package (sources only).
* ``layers/<name>.zip``: the third-party packages the handlers import, built for
  the Lambda runtime (:data:`LAMBDA_RUNTIME`), each under ``python/`` as Lambda
  layers must be. Which function uses which layer is :data:`FUNCTION_LAYERS`.
* ``fraudops_glue.zip``: the package for the Glue ETL job's ``--extra-py-files``;
  the job's third-party modules are :data:`GLUE_PYTHON_MODULES`
  (``--additional-python-modules``).
* ``fraudops_features.zip`` and ``companions/emr/feature_job.py``: the EMR job.
* ``companions/glue/transactions_etl.py``: the Glue job script.
* ``source.zip``: what CodeBuild checks out to run ``codebuild-buildspec.yml``.
* ``workflow.asl.json``: the rendered Step Functions definition.
* ``manifest.json``: each artifact's SHA-256 and size, the layer build's target,
  and each function's unpacked size against Lambda's limit.

Every zip is reproducible (:mod:`pipelines.core.archive`): the same commit and
the same wheels give the same bytes.

Why Python 3.12 on Lambda: pyarrow 25, duckdb 2 and numpy 2.4 publish only
``manylinux_2_27``/``manylinux_2_28`` wheels for Linux, which need glibc 2.27+.
Lambda's python3.11 runtime runs on Amazon Linux 2 (glibc 2.26) and cannot load
them; python3.12 runs on Amazon Linux 2023 (glibc 2.34).
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.archive import tree_entries, unzipped_size, write_zip
from pipelines.core.code import BUNDLED_UNITS, import_root, unit_dir
from pipelines.core.fileio import write_text_atomically
from pipelines.data.features.emr import ARCHIVE_NAME as EMR_ARCHIVE
from pipelines.data.features.emr import ENTRY_POINT as EMR_ENTRY
from pipelines.data.features.emr import build_job_archive
from pipelines.workflow.declaration import FRAUD_WORKFLOW
from pipelines.workflow.render import to_state_machine

LAMBDA_RUNTIME = "python3.12"
LAMBDA_PYTHON = "3.12"
# pip --platform values a wheel may carry to load on Amazon Linux 2023 (x86_64).
LAMBDA_PLATFORMS: tuple[str, ...] = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
# Lambda: function code plus all its layers, unpacked (AWS quotas page: 250 MB).
LAMBDA_UNZIPPED_LIMIT = 262_144_000
# What the Lambda Python runtime ships: never put into a layer.
RUNTIME_PROVIDED: tuple[str, ...] = (
    "boto3", "botocore", "jmespath", "s3transfer", "urllib3", "python-dateutil", "six",
)

BUNDLE = "lambda.zip"
GLUE_ARCHIVE = "fraudops_glue.zip"
GLUE_ENTRY = "companions/glue/transactions_etl.py"
SOURCE_ARCHIVE = "source.zip"
STATE_MACHINE = "workflow.asl.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Layer:
    """A Lambda layer: whole distributions, less what the handlers never load."""

    name: str
    distributions: tuple[str, ...]
    # Globs (relative to the layer's python/ folder) left out to fit Lambda's limit.
    trim: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"layers/{self.name}.zip"


_NO_TESTS = ("*/tests/*", "*/testing/*", "*.pyx", "*.pxd", "*.pxi", "*.h", "*.hpp", "*.cc")
LAYERS: tuple[Layer, ...] = (
    # pyarrow without Flight, Substrait, Gandiva and its C++ headers and sources
    # (about 45 MB): nothing in the package imports pyarrow.flight or .substrait.
    Layer("arrow", ("pyarrow", "numpy"), trim=(
        *_NO_TESTS, "pyarrow/include/*", "pyarrow/src/*", "pyarrow/*flight*",
        "pyarrow/_substrait*", "pyarrow/substrait.py", "pyarrow/*gandiva*",
        # Link-time copies of the library; the extensions load it by its soname (.so.2500).
        "pyarrow/libarrow_python.so", "pyarrow/libarrow_python.so.*.*",
        "numpy/f2py/*", "numpy/_pyinstaller/*", "numpy/*.pyi", "numpy/*/*.pyi", "numpy/typing/*",
    )),
    # The online feature engine compiles its SQL with sqlglot; ingest validation
    # (shared with the stream) runs on DuckDB.
    Layer("engine", ("duckdb", "sqlglot"), trim=(*_NO_TESTS, "duckdb/experimental/*")),
    # The ingest reconciliation (imported by the stream's validation) prints with rich.
    Layer("console", ("rich", "pygments", "markdown-it-py", "mdurl"), trim=_NO_TESTS),
)
# Handler module -> the layers its function lists (infra/ml.yaml must agree).
FUNCTION_LAYERS: dict[str, tuple[str, ...]] = {
    "lambdas.alert.handler": ("arrow", "engine", "console"),
    # The registry code it shares with the CLI reads the card-data schema (pyarrow).
    "lambdas.deploy.handler": ("arrow",),
    "lambdas.failure_notification.handler": (),
    "lambdas.stream_scoring.handler": ("arrow", "engine", "console"),
}
# The Glue ETL job's imports beyond what Glue 5.0 provides (boto3).
GLUE_PYTHON_MODULES: tuple[str, ...] = ("duckdb", "pyarrow", "numpy", "rich")

# What CodeBuild's model build (infra/cicd.yaml) needs for `pip install .`: the files
# setup.py reads, the packages, and the folders setup.py bundles into the package.
SOURCE_FILES: tuple[str, ...] = (
    "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "codebuild-buildspec.yml",
)
SOURCE_PACKAGES: tuple[str, ...] = ("pipelines", "lambdas", "companions")
BUNDLE_TREES: tuple[str, ...] = ("lambdas", "pipelines")


class BuildError(RuntimeError):
    """An artifact cannot be built as asked; the message says what to change."""


# --- where third-party packages come from ---------------------------------------------------


@dataclass(frozen=True)
class PipSource:
    """Wheels for the Lambda platform, downloaded by pip (or from a local wheel folder)."""

    python_version: str = LAMBDA_PYTHON
    platforms: tuple[str, ...] = LAMBDA_PLATFORMS
    find_links: Path | None = None  # a folder of wheels; with it, no index is used
    kind: str = field(default="pip", init=False)

    def describe(self) -> dict[str, object]:
        return {"source": "pip", "python": self.python_version, "platforms": list(self.platforms)}

    def install(self, distributions: Iterable[str], target: Path) -> None:
        pins = [f"{name}=={_version(name)}" for name in distributions]
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-compile", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
            "--python-version", self.python_version, "--target", str(target),
            *[f"--platform={platform}" for platform in self.platforms],
        ]
        if self.find_links is not None:
            command += ["--no-index", "--find-links", str(self.find_links)]
        result = subprocess.run([*command, *pins], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(
                f"pip could not fetch {', '.join(pins)} for Python {self.python_version} on "
                f"{self.platforms[0]}:\n{result.stderr.strip()}\nPass --wheels DIR with those "
                "wheels to build offline."
            )


@dataclass(frozen=True)
class InstalledSource:
    """The distributions installed in this interpreter, copied file by file.

    Only right for a Lambda whose Python and platform are this interpreter's;
    ``infra deploy`` refuses layers built this way for another runtime. Tests use
    it to build layers without a network.
    """

    kind: str = field(default="installed", init=False)

    def describe(self) -> dict[str, object]:
        return {"source": "installed", "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
                "platforms": [sys.platform]}

    def install(self, distributions: Iterable[str], target: Path) -> None:
        copy_installed(distributions, target)


LayerSource = PipSource | InstalledSource


def _version(name: str) -> str:
    """The version installed here: the one the tests ran against."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"{name} is not installed here; `pip install -e .` first") from None


def copy_installed(distributions: Iterable[str], target: Path) -> None:
    """Copy each installed distribution's files (its RECORD) into ``target``."""
    for name in distributions:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise BuildError(f"{name} is not installed here; `pip install -e .` first") from None
        for file in dist.files or ():
            relative = Path(str(file))
            if relative.parts[0] == ".." or "__pycache__" in relative.parts:
                continue  # console scripts outside site-packages, bytecode
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)


# --- the artifacts --------------------------------------------------------------------------


def _package_entries(trees: Iterable[str]) -> dict[str, Path]:
    """Python sources and the package's data files (named queries) of ``trees``."""
    root = import_root()
    entries: dict[str, Path] = {}
    for tree in trees:
        for name, path in tree_entries(root / tree, prefix=f"{tree}/").items():
            if path.suffix in (".py", ".sql"):
                entries[name] = path
    return entries


def build_lambda_bundle(out_dir: Path) -> Path:
    """The handlers and the ``pipelines`` package; third-party code is in the layers."""
    return write_zip(out_dir / BUNDLE, _package_entries(BUNDLE_TREES))


def build_layer(layer: Layer, out_dir: Path, source: LayerSource) -> Path:
    """``layers/<name>.zip``: the layer's distributions under ``python/``, trimmed."""
    with tempfile.TemporaryDirectory(prefix=f"layer-{layer.name}-") as tmp:
        target = Path(tmp)
        source.install(layer.distributions, target)
        entries = {
            f"python/{name}": path
            for name, path in tree_entries(target).items()
            if not _trimmed(name, layer.trim)
        }
        return write_zip(out_dir / layer.key, entries)


def _trimmed(name: str, patterns: tuple[str, ...]) -> bool:
    if name.endswith(".dist-info/direct_url.json") or name.endswith(".dist-info/RECORD"):
        return True  # names the wheel's origin (differs per build) / lists trimmed files
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def build_glue_archive(out_dir: Path) -> Path:
    """The package for the Glue job's ``--extra-py-files`` (pure Python, zip-importable)."""
    return write_zip(out_dir / GLUE_ARCHIVE, _package_entries(("pipelines", "companions")))


def build_source_archive(out_dir: Path) -> Path:
    """``source.zip``: the project as CodeBuild's model build needs it for ``pip install .``.

    Made from a source checkout: an installed package has no ``setup.py`` to ship.
    """
    root = import_root()
    missing = [name for name in SOURCE_FILES if not (root / name).is_file()]
    if missing:
        raise BuildError(
            f"the CodeBuild source (source.zip) is made from a source checkout, but {root} has "
            f"no {', '.join(missing)}: run `fraudops infra build` from a clone of the repository"
        )
    entries: dict[str, Path] = {name: root / name for name in SOURCE_FILES}
    for package in SOURCE_PACKAGES:
        entries.update(tree_entries(root / package, f"{package}/", skip=("_bundled",)))
    for unit in BUNDLED_UNITS:
        entries.update(tree_entries(unit_dir(unit), f"{unit}/"))
    return write_zip(out_dir / SOURCE_ARCHIVE, entries)


def build_state_machine(out_dir: Path) -> Path:
    path = out_dir / STATE_MACHINE
    write_text_atomically(path, json.dumps(to_state_machine(FRAUD_WORKFLOW), indent=2,
                                           sort_keys=True) + "\n")
    return path


def build_artifacts(out_dir: Path, source: LayerSource | None = None) -> dict[str, Path]:
    """Every artifact, keyed by its key under ``code/<version>/``; writes the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = source or PipSource()
    root = import_root()
    artifacts: dict[str, Path] = {
        BUNDLE: build_lambda_bundle(out_dir),
        GLUE_ARCHIVE: build_glue_archive(out_dir),
        EMR_ARCHIVE: build_job_archive(out_dir),
        SOURCE_ARCHIVE: build_source_archive(out_dir),
        STATE_MACHINE: build_state_machine(out_dir),
    }
    for layer in LAYERS:
        artifacts[layer.key] = build_layer(layer, out_dir, source)
    for script in (GLUE_ENTRY, EMR_ENTRY):
        destination = out_dir / script
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / script, destination)
        artifacts[script] = destination
    manifest = build_manifest(artifacts, source)
    problems = [f"{f['handler']}: {f['unzipped_bytes']:,} bytes unpacked, over Lambda's "
                f"{LAMBDA_UNZIPPED_LIMIT:,}" for f in manifest["functions"] if not f["fits"]]
    if problems:
        raise BuildError("; ".join(problems) + ": trim or split a layer (workflow/artifacts.py)")
    path = out_dir / MANIFEST
    write_text_atomically(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {**artifacts, MANIFEST: path}


def build_manifest(artifacts: Mapping[str, Path], source: LayerSource) -> dict:
    sizes = {key: unzipped_size(path) for key, path in artifacts.items() if key.endswith(".zip")}
    layers = {layer.name: layer.key for layer in LAYERS}
    functions = []
    for handler, names in sorted(FUNCTION_LAYERS.items()):
        total = sizes[BUNDLE] + sum(sizes[layers[n]] for n in names)
        functions.append({"handler": handler, "layers": list(names), "unzipped_bytes": total,
                          "limit_bytes": LAMBDA_UNZIPPED_LIMIT,
                          "fits": total <= LAMBDA_UNZIPPED_LIMIT})
    return {
        "runtime": LAMBDA_RUNTIME,
        "layers_built_for": source.describe(),
        "artifacts": {
            key: {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                  "bytes": path.stat().st_size, **({"unzipped_bytes": sizes[key]}
                                                    if key in sizes else {})}
            for key, path in sorted(artifacts.items())
        },
        "functions": functions,
        "glue_python_modules": glue_python_modules(),
    }


def glue_python_modules() -> str:
    """``--additional-python-modules`` for the Glue job: pinned to the tested versions."""
    return ",".join(f"{name}=={_version(name)}" for name in GLUE_PYTHON_MODULES)


def read_manifest(artifacts_dir: Path) -> dict:
    path = Path(artifacts_dir) / MANIFEST
    if not path.is_file():
        raise BuildError(f"{path} not found: run `fraudops infra build --out {artifacts_dir}`")
    return json.loads(path.read_text())


def deployable(artifacts_dir: Path) -> dict[str, Path]:
    """The artifacts of a build for upload; refuses layers built for another Python."""
    manifest = read_manifest(artifacts_dir)
    built = manifest["layers_built_for"]
    if built["python"] != LAMBDA_PYTHON or built["source"] != "pip":
        raise BuildError(
            f"the layers in {artifacts_dir} were built from {built['source']} packages for "
            f"Python {built['python']}, but the functions run {LAMBDA_RUNTIME} on Amazon "
            "Linux 2023: rebuild with `fraudops infra build` (pip, manylinux wheels)"
        )
    paths = {key: Path(artifacts_dir) / key for key in manifest["artifacts"]}
    missing = [key for key, path in paths.items() if not path.is_file()]
    if missing:
        raise BuildError(f"{artifacts_dir} lacks {', '.join(missing)}: rebuild it")
    return {**paths, MANIFEST: Path(artifacts_dir) / MANIFEST}
