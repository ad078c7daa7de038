"""A plain, non-editable install works from any directory, offline (issue 10).

What CodeBuild does (``pip install .``, then the console scripts), without the
network: the source archive CodeBuild checks out (``source.zip``, built by
``pipelines.workflow.artifacts``) is unpacked, built into an sdist and the sdist
into a wheel (so ``MANIFEST.in`` and ``setup.py``'s bundling of the container
code are both exercised), the wheel goes into a fresh venv, and the unpacked
source is deleted before anything runs. The fresh venv reaches the third-party dependencies
through a ``.pth`` line naming this venv's site-packages; ``.pth`` files inside
that directory are not processed, so the checkout's editable finder does not
leak in. A guard loaded at start-up records every module the fresh venv
imports from the checkout; any such import fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.workflow.artifacts import build_source_archive

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
# Folders setup.py bundles into the wheel whose code the definition references.
CODE_UNITS = ("processing", "training", "inference")
REPORT_ENV = "FRAUDOPS_PACKAGING_IMPORT_REPORT"

# Loaded by a .pth line at every start of the fresh venv's Python: on exit it
# writes which modules (if any) came from the checkout.
IMPORT_GUARD = '''\
"""Written by tests/test_packaging.py: reports modules imported from the checkout."""
import atexit
import os
import sys

CHECKOUT = {checkout!r}
DEPENDENCIES = {dependencies!r}


def _from_checkout(path):
    path = os.path.realpath(path)
    return path.startswith(CHECKOUT + os.sep) and not any(
        path.startswith(folder + os.sep) for folder in DEPENDENCIES)


def _report():
    leaked = []
    for name, module in list(sys.modules.items()):
        paths = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])]
        leaked += [f"{{name}} from {{path}}" for path in paths if path and _from_checkout(path)]
    with open(os.environ["{report_env}"], "w") as report:
        report.write("\\n".join(["checked", *sorted(set(leaked))]))


if os.environ.get("{report_env}"):
    atexit.register(_report)
'''


@dataclass(frozen=True)
class FreshInstall:
    """A venv holding only the installed wheel, and a directory outside the checkout."""

    venv: Path
    site_packages: Path
    workdir: Path
    marker: str  # written into each code unit of the source that was built

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (a script of the venv) from ``workdir``; fail on checkout imports."""
        report = self.workdir / f"imports-{uuid.uuid4().hex}.txt"
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
        env[REPORT_ENV] = str(report)
        result = _run([str(self.venv / "bin" / command[0]), *command[1:]],
                      cwd=self.workdir, env=env)
        lines = report.read_text().splitlines() if report.exists() else []
        assert lines[:1] == ["checked"], f"the import guard did not run for {command}"
        assert lines[1:] == [], (
            f"{' '.join(command)} imported from the checkout {REPO_ROOT} instead of the "
            f"installed package:\n" + "\n".join(lines[1:])
        )
        return result


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    return result


def _unpack_source(destination: Path, marker: str) -> None:
    """CodeBuild's source archive of this checkout, unpacked, each code unit marked."""
    with zipfile.ZipFile(build_source_archive(destination.parent)) as archive:
        archive.extractall(destination)
    for unit in CODE_UNITS:
        script = sorted((destination / unit).glob("*.py"))[0]
        with script.open("a") as handle:
            handle.write(f"\n# {marker}\n")


def _build_wheel(source: Path, out: Path) -> Path:
    """sdist first, then the wheel from the unpacked sdist (as ``python -m build`` does)."""
    sdist_dir, wheel_dir = out / "sdist", out / "wheel"
    sdist_dir.mkdir()
    _run([sys.executable, "-c",
          f"from setuptools import build_meta; build_meta.build_sdist({str(sdist_dir)!r})"],
         cwd=source)
    (sdist,) = sdist_dir.glob("*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
          "--no-build-isolation", "--wheel-dir", str(wheel_dir), str(sdist)], cwd=out)
    (wheel,) = wheel_dir.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> FreshInstall:
    root = tmp_path_factory.mktemp("packaging")
    marker = f"packaging-test-marker {uuid.uuid4().hex}"
    source = root / "source"
    _unpack_source(source, marker)
    wheel = _build_wheel(source, root)
    shutil.rmtree(source)  # nothing may read the unpacked source either

    venv = root / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    site_packages = Path(_run([python, "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    dependencies = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site_packages / "_fraudops_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    (site_packages / "_fraudops_import_guard.py").write_text(IMPORT_GUARD.format(
        checkout=str(REPO_ROOT), dependencies=[os.path.realpath(d) for d in dependencies],
        report_env=REPORT_ENV))
    (site_packages / "_fraudops_import_guard.pth").write_text("import _fraudops_import_guard\n")
    # pip itself comes from the dependencies; --ignore-installed so it never
    # touches the editable fraudops it can see there.
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
          "--ignore-installed", str(wheel)])
    workdir = root / "elsewhere"
    workdir.mkdir()
    return FreshInstall(venv, site_packages, workdir, marker)


def test_the_installed_package_is_the_one_imported(fresh: FreshInstall):
    result = fresh.run("python", "-c", (
        "import json, companions, lambdas, pipelines\n"
        "from pipelines.core.code import code_root, import_root\n"
        "print(json.dumps({'pipelines': pipelines.__file__, 'lambdas': lambdas.__file__,"
        " 'companions': companions.__file__, 'code_root': str(code_root()),"
        " 'import_root': str(import_root())}))"))
    where = json.loads(result.stdout)
    for name, path in where.items():
        assert Path(path).is_relative_to(fresh.site_packages), (name, path)
    assert Path(where["code_root"]) == fresh.site_packages / "pipelines" / "_bundled"


def test_the_import_guard_catches_an_import_from_the_checkout(fresh: FreshInstall):
    with pytest.raises(AssertionError, match="imported from the checkout"):
        fresh.run("python", "-c", f"import sys; sys.path[:0] = [{str(REPO_ROOT)!r}]; import bench")


@pytest.mark.parametrize("script", ["fraudops", "run-pipeline"])
def test_console_scripts_answer_help(fresh: FreshInstall, script: str):
    result = fresh.run(script, "--help")
    assert result.stdout.startswith(f"usage: {script}")


def test_get_pipeline_definition_renders_offline_with_the_installed_code(fresh: FreshInstall):
    store = fresh.workdir / "object-store"
    fresh.run("get-pipeline-definition", "--file-name", "definition.json",
              "--code-store", str(store))
    text = (fresh.workdir / "definition.json").read_text()
    definition = json.loads(text)
    names = {step["Name"] for step in definition["Steps"]}
    for branch in ("IfSteps", "ElseSteps"):
        for step in definition["Steps"]:
            names |= {s["Name"] for s in step["Arguments"].get(branch, [])}
    assert {"Preprocess", "Train", "Evaluate", "QualityGate", "Register"} <= names

    # Each code unit the definition references is the marked source that was built
    # into the wheel, not the checkout's folder of the same name.
    for unit in CODE_UNITS:
        staged = sorted(store.glob(f"*/*/code/{unit}/*/sourcedir.tar.gz"))
        marked = [tarball for tarball in staged if _contains(tarball, fresh.marker)]
        assert marked, f"no staged {unit} code carries the marker of the built source: {staged}"
        digest = marked[0].parent.name
        assert f"/code/{unit}/{digest}/" in text, f"the definition does not reference {marked[0]}"


def _contains(tarball: Path, needle: str) -> bool:
    with tarfile.open(tarball) as archive:
        return any(needle.encode() in archive.extractfile(member).read()
                   for member in archive.getmembers() if member.isfile())
