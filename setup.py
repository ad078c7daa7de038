"""Installable package: pipeline definition, local backend, AWS adapters, CLI."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
# Container code and templates the package deploys; shipped inside it as
# pipelines/_bundled/<unit> (found by pipelines/core/code.py).
BUNDLED_UNITS = ("processing", "training", "inference", "infra")


class BuildPyWithBundledCode(build_py):
    """``build_py`` that also copies the container code and templates into the package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        for unit in BUNDLED_UNITS:
            target = Path(self.build_lib) / "pipelines" / "_bundled" / unit
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(HERE / unit, target,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


about: dict[str, str] = {}
exec((HERE / "pipelines" / "__init__.py").read_text(), about)

# Direct dependencies, pinned; the SageMaker SDK needs the s3fs floor or pip
# back-tracks for minutes into a 2019 release.
required_packages = [
    "sagemaker==3.27.0",
    "s3fs==2026.9.0",
    "boto3==1.43.117",
    # Same XGBoost as the SageMaker framework container the definition names.
    "xgboost-cpu==3.2.0",
    "scikit-learn==1.9.1",
    "pandas==3.1.1",
    "pyarrow==25.0.1",
    "duckdb==2.0.1",
    "sqlglot==30.30.0",
    "rich==14.3.4",
    "plotly==7.1.0",
    "PyYAML==6.0.4",
    # Regulatory reports as PDF (pure Python, no system libraries).
    "reportlab==5.1.0",
    # get-pipeline-definition renders the definition offline under moto's S3.
    "moto[s3]==5.2.5",
]
extras = {
    "spark": ["pyspark==4.3.0"],
    "dev": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "moto[all]==5.2.5",
        "ruff==0.17.6",
        "cfn-lint==1.58.0",
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
        "pyspark==4.3.0",
        # tests/test_packaging.py builds the wheel offline (no build isolation), and
        # the setuptools a Python 3.11 venv starts with has no bdist_wheel of its own.
        "wheel==0.45.1",
    ],
}

setup(
    name="fraudops",
    version=about["__version__"],
    description="Fraud detection and compliance workflow on Amazon SageMaker Pipelines",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pipelines", "pipelines.*", "companions", "companions.*",
                                    "lambdas", "lambdas.*"]),
    # The named Athena queries are data files read at run time.
    package_data={"pipelines.data.lake": ["queries/*.sql", "queries/reports/*.sql"]},
    cmdclass={"build_py": BuildPyWithBundledCode},
    install_requires=required_packages,
    extras_require=extras,
    entry_points={
        "console_scripts": [
            "fraudops=pipelines.cli.main:main",
            "run-pipeline=pipelines.cli.run_pipeline:main",
            "get-pipeline-definition=pipelines.cli.get_pipeline_definition:main",
        ]
    },
    license="Proprietary",
)
