"""Run Processing and Training jobs the way their containers would, without Docker.

Each job gets a scratch directory whose ``opt/ml`` subtree stands in for the
container's ``/opt/ml``: inputs are staged there, every ``/opt/ml/...`` path
in the job request is rewritten to it, the script runs in a subprocess with
the project's interpreter and a minimal environment, and outputs are copied
back to the local object store (Processing) or tarred into
``model.tar.gz`` (Training), exactly where SageMaker would put them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.workspace import Workspace
from pipelines.model.executor import objects
from pipelines.model.executor.errors import (
    ALGORITHM_ERROR,
    CLIENT_ERROR,
    JOB_INTERNAL_ERROR,
    SERVICE_FAULT,
    StepFailure,
    UnsupportedFeatureError,
)
from pipelines.model.executor.store import ARN_PREFIX

CONTAINER_ROOT = "/opt/ml"
# ModelStep's repack (SDK v3): a ModelTrainer job whose entry script launches this script.
REPACK_LAUNCHER = "_repack_script_launcher.sh"
REPACK_SCRIPT = "_repack_model.py"
LOG_TAIL_LINES = 25
# Thread settings pass through so a step uses the cores the user allotted.
_PASSTHROUGH_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_MAX_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "RAYON_NUM_THREADS",
    "ARROW_NUM_THREADS",
    "TZ",
)
_CONTAINER_PATH = re.compile(r"(?<![\w.-])/opt/ml(?![\w.-])")
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
# Runs the script as `python script.py` would, but without the project's
# editable-install finder, so a container script importing the project package
# fails here exactly as it would in the real container.
_BOOTSTRAP = (
    "import os, runpy, sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path\n"
    "                    if not str(getattr(f, '__module__', '')).startswith('__editable__')]\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@dataclass
class JobContext:
    """Where one job attempt runs and logs."""

    workspace: Workspace
    step_name: str
    job_name: str
    scratch: Path
    log_path: Path

    @property
    def base(self) -> Path:
        """Stand-in for the container's ``/opt/ml``."""
        return self.scratch / "opt" / "ml"

    @property
    def workdir(self) -> Path:
        """The job's working directory (inside the scratch dir, like a container's)."""
        return self.scratch / "work"

    def container_path(self, value: str) -> str:
        """Rewrite every ``/opt/ml`` path inside ``value`` to the scratch stand-in."""
        return _CONTAINER_PATH.sub(lambda _: str(self.base), value)


@dataclass
class JobResult:
    """What a finished job exposes: step properties, metadata and written objects."""

    properties: dict[str, Any]
    metadata: dict[str, Any]
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)


# --- Processing ----------------------------------------------------------------


def run_processing_job(args: dict[str, Any], ctx: JobContext) -> JobResult:
    """Run a resolved CreateProcessingJob request; raises ``StepFailure`` on failure."""
    check_processing_shape(args, ctx.step_name)
    for item in args.get("ProcessingInputs") or []:
        _stage(
            ctx,
            item["S3Input"]["S3Uri"],
            _local_path(ctx, item["S3Input"]["LocalPath"]),
            f"input {item.get('InputName')!r}",
        )
    outputs = (args.get("ProcessingOutputConfig") or {}).get("Outputs") or []
    for item in outputs:
        Path(_local_path(ctx, item["S3Output"]["LocalPath"])).mkdir(parents=True, exist_ok=True)
    argv, cwd = _processing_command(args["AppSpecification"], ctx)
    env = _environment(ctx, args.get("Environment"))
    _run(argv, cwd, env, ctx, _max_runtime(args), "processing script")
    written = {}
    for item in outputs:
        uri = item["S3Output"]["S3Uri"]
        written[uri] = _upload(ctx, Path(_local_path(ctx, item["S3Output"]["LocalPath"])), uri)
    arn = f"{ARN_PREFIX}:processing-job/{ctx.job_name}"
    properties = {
        **args,
        "ProcessingJobName": ctx.job_name,
        "ProcessingJobArn": arn,
        "ProcessingJobStatus": "Completed",
        "ExitMessage": "",
    }
    return JobResult(properties, {"ProcessingJob": {"Arn": arn}}, written)


def check_processing_shape(args: dict[str, Any], step_name: str) -> None:
    """Raise ``UnsupportedFeatureError`` for request features the executor cannot honour."""
    where = f"Processing step {step_name!r}"
    for item in args.get("ProcessingInputs") or []:
        name = item.get("InputName")
        if "S3Input" not in item:
            raise UnsupportedFeatureError(
                f"{where}: input {name!r} uses {sorted(set(item) - {'InputName', 'AppManaged'})}; "
                "only S3Input inputs run locally (DatasetDefinition needs Athena/Redshift)"
            )
        s3 = item["S3Input"]
        _require(
            s3.get("S3DataType", "S3Prefix") == "S3Prefix",
            where,
            f"input {name!r} S3DataType {s3.get('S3DataType')!r} (only S3Prefix)",
        )
        _require(
            s3.get("S3InputMode", "File") == "File",
            where,
            f"input {name!r} S3InputMode {s3.get('S3InputMode')!r} (only File)",
        )
        _require(
            s3.get("S3CompressionType", "None") == "None",
            where,
            f"input {name!r} S3CompressionType {s3.get('S3CompressionType')!r} (only None)",
        )
    for item in (args.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
        _require(
            "S3Output" in item,
            where,
            f"output {item.get('OutputName')!r} without S3Output (FeatureStoreOutput)",
        )
    entrypoint = (args.get("AppSpecification") or {}).get("ContainerEntrypoint")
    _require(
        bool(entrypoint),
        where,
        "AppSpecification without ContainerEntrypoint runs the image's own program, "
        "which needs the image",
    )


def _processing_command(app: dict[str, Any], ctx: JobContext) -> tuple[list[str], Path]:
    entrypoint = [ctx.container_path(str(t)) for t in app["ContainerEntrypoint"]]
    arguments = [ctx.container_path(str(t)) for t in app.get("ContainerArguments") or []]
    program = Path(entrypoint[0]).name
    cwd = ctx.workdir
    if _PYTHON.match(program):
        argv = python_invocation(entrypoint[1:], f"step {ctx.step_name!r} ContainerEntrypoint")
    elif program in ("bash", "sh") and len(entrypoint) == 2 and entrypoint[1].endswith(".sh"):
        argv, cwd = _framework_runproc(Path(entrypoint[1]), ctx)
    else:
        raise UnsupportedFeatureError(
            f"Processing step {ctx.step_name!r}: ContainerEntrypoint {app['ContainerEntrypoint']} "
            "is neither a python script nor a FrameworkProcessor runproc.sh"
        )
    argv += arguments
    if not any(a == "--base-dir" or a.startswith("--base-dir=") for a in arguments):
        argv += ["--base-dir", str(ctx.base)]
    return argv, cwd


@dataclass(frozen=True)
class RunprocPlan:
    """What a FrameworkProcessor ``runproc.sh`` does: cd, unpack, run a python script."""

    code_dir: str
    archive: str | None
    interpreter_args: list[str]
    script: str


def parse_runproc(text: str, where: str) -> RunprocPlan:
    """Read the SDK-generated ``runproc.sh``; anything else is an UnsupportedFeatureError."""
    code_dir, archive, command = None, None, None
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("cd "):
            code_dir = shlex.split(line)[1]
        elif line.startswith("tar ") and "-xzf" in line:
            archive = shlex.split(line)[-1]
        elif line.endswith('"$@"'):
            command = shlex.split(line)[:-1]
    if code_dir is None or not command or not _PYTHON.match(Path(command[0]).name):
        raise UnsupportedFeatureError(
            f"{where}: expected the SageMaker FrameworkProcessor shape "
            '(cd <code dir>; tar -xzf sourcedir.tar.gz; python <script> "$@")'
        )
    return RunprocPlan(code_dir, archive, command[1:-1], command[-1])


def _framework_runproc(script: Path, ctx: JobContext) -> tuple[list[str], Path]:
    """Do what a FrameworkProcessor ``runproc.sh`` does: unpack the source dir, run the script.

    The requirements install it would run is skipped: the executor uses the
    project's environment, which already has the container's packages.
    """
    where = f"Processing step {ctx.step_name!r} entrypoint {script.name}"
    if not script.is_file():
        raise StepFailure(f"{where}: the script was not staged at {script}", CLIENT_ERROR)
    plan = parse_runproc(script.read_text(encoding="utf-8"), where)
    code_dir = Path(ctx.container_path(plan.code_dir))
    if plan.archive:
        if not (code_dir / plan.archive).is_file():
            raise StepFailure(f"{where}: {plan.archive} not found in {code_dir}", CLIENT_ERROR)
        objects.extract_tarball(code_dir / plan.archive, code_dir)
    argv = python_invocation([*plan.interpreter_args, str(code_dir / plan.script)], where)
    return argv, code_dir


# --- Training ------------------------------------------------------------------


def run_training_job(args: dict[str, Any], ctx: JobContext) -> JobResult:
    """Run a resolved CreateTrainingJob request; raises ``StepFailure`` on failure."""
    check_training_shape(args, ctx.step_name)
    channels = {}
    for channel in args.get("InputDataConfig") or []:
        name = channel["ChannelName"]
        local = ctx.base / "input" / "data" / name
        _stage(ctx, channel["DataSource"]["S3DataSource"]["S3Uri"], str(local), f"channel {name!r}")
        channels[name] = channel
    hyperparameters = dict(args.get("HyperParameters") or {})
    _write_input_config(ctx, args, channels, hyperparameters)
    for sub in ("model", "output/data", "code"):
        (ctx.base / sub).mkdir(parents=True, exist_ok=True)
    argv, cwd, extra_env = _training_command(ctx, hyperparameters)
    env = _environment(ctx, args.get("Environment"))
    env.update(_training_env(ctx, args, channels, hyperparameters))
    env.update(extra_env)
    _run(argv, cwd, env, ctx, _max_runtime(args), "training script")
    output_path = str(args["OutputDataConfig"]["S3OutputPath"]).rstrip("/")
    model_uri = f"{output_path}/{ctx.job_name}/output/model.tar.gz"
    outputs = {model_uri: {"": _tar(ctx, ctx.base / "model", model_uri)}}
    if any((ctx.base / "output" / "data").iterdir()):
        data_uri = f"{output_path}/{ctx.job_name}/output/output.tar.gz"
        outputs[data_uri] = {"": _tar(ctx, ctx.base / "output" / "data", data_uri)}
    arn = f"{ARN_PREFIX}:training-job/{ctx.job_name}"
    properties = {
        **args,
        "TrainingJobName": ctx.job_name,
        "TrainingJobArn": arn,
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": model_uri},
        "FinalMetricDataList": _final_metrics(args, ctx.log_path),
    }
    return JobResult(properties, {"TrainingJob": {"Arn": arn}}, outputs)


def check_training_shape(args: dict[str, Any], step_name: str) -> None:
    """Raise ``UnsupportedFeatureError`` for request features the executor cannot honour."""
    where = f"Training step {step_name!r}"
    for channel in args.get("InputDataConfig") or []:
        name = channel.get("ChannelName")
        source = channel.get("DataSource") or {}
        _require(
            "S3DataSource" in source,
            where,
            f"channel {name!r} DataSource {sorted(source)} (only S3DataSource)",
        )
        s3 = source["S3DataSource"]
        _require(
            s3.get("S3DataType", "S3Prefix") == "S3Prefix",
            where,
            f"channel {name!r} S3DataType {s3.get('S3DataType')!r} (only S3Prefix)",
        )
        _require(
            channel.get("InputMode", "File") in ("File", "FastFile"),
            where,
            f"channel {name!r} InputMode {channel.get('InputMode')!r} (File or FastFile)",
        )
        _require(
            channel.get("CompressionType", "None") == "None",
            where,
            f"channel {name!r} CompressionType {channel.get('CompressionType')!r}",
        )
    _require(
        "S3OutputPath" in (args.get("OutputDataConfig") or {}),
        where,
        "OutputDataConfig.S3OutputPath is required",
    )
    hps = args.get("HyperParameters") or {}
    channel_names = {c.get("ChannelName") for c in args.get("InputDataConfig") or []}
    _require(
        "sagemaker_program" in hps or "sm_drivers" in channel_names,
        where,
        f"image {args.get('AlgorithmSpecification', {}).get('TrainingImage')!r} with no "
        "script (neither a sagemaker_program hyper-parameter nor ModelTrainer SourceCode) "
        "runs the container's built-in algorithm, which the local executor cannot run",
    )


def _training_command(
    ctx: JobContext, hyperparameters: dict[str, Any]
) -> tuple[list[str], Path, dict[str, str]]:
    drivers = ctx.base / "input" / "data" / "sm_drivers"
    if (drivers / "sourcecode.json").is_file():
        return _model_trainer_command(ctx, drivers, hyperparameters)
    return _script_mode_command(ctx, hyperparameters)


def _model_trainer_command(
    ctx: JobContext, drivers: Path, hyperparameters: dict[str, Any]
) -> tuple[list[str], Path, dict[str, str]]:
    """What ModelTrainer's ``sm_train.sh`` + basic script driver do for a SourceCode."""
    where = f"Training step {ctx.step_name!r} (ModelTrainer SourceCode)"
    source = json.loads((drivers / "sourcecode.json").read_text(encoding="utf-8"))
    distributed = drivers / "distributed.json"
    if distributed.is_file() and json.loads(distributed.read_text(encoding="utf-8") or "{}"):
        raise UnsupportedFeatureError(f"{where}: distributed training drivers (torchrun/MPI)")
    code_dir = ctx.base / "input" / "data" / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    source_dir = str(source.get("source_dir") or "")
    if source_dir.endswith(".tar.gz"):
        objects.extract_tarball(code_dir / Path(source_dir).name, code_dir)
    entry_script = source.get("entry_script") or ""
    if source.get("command"):
        tokens = shlex.split(source["command"]) + [str(a) for a in source.get("args") or []]
        if not _PYTHON.match(Path(tokens[0]).name):
            raise UnsupportedFeatureError(f"{where}: command {source['command']!r} is not python")
        argv = python_invocation(tokens[1:], where)
    elif entry_script == REPACK_LAUNCHER:
        argv = _repack_command(ctx, code_dir, hyperparameters, where)
    elif entry_script.endswith(".py"):
        argv = python_invocation([entry_script, *hyperparameter_args(hyperparameters)], where)
    else:
        raise UnsupportedFeatureError(f"{where}: entry script {entry_script!r} (only .py)")
    env = {"SM_SOURCE_DIR": str(code_dir), "SM_ENTRY_SCRIPT": entry_script}
    return argv, code_dir, env


def _repack_command(
    ctx: JobContext, code_dir: Path, hyperparameters: dict[str, Any], where: str
) -> list[str]:
    """What the SDK's model-repack launcher does: ``python _repack_model.py`` + its HPs.

    That SDK script hard-codes ``/opt/ml`` paths, so its staged copy (a copy:
    the object-store original is untouched) gets them rewritten to the scratch
    stand-in, exactly as the executor rewrites paths in job requests.
    """
    script = code_dir / REPACK_SCRIPT
    if not script.is_file():
        raise StepFailure(f"{where}: {REPACK_SCRIPT} is not in the code channel", CLIENT_ERROR)
    script.write_text(ctx.container_path(script.read_text(encoding="utf-8")), encoding="utf-8")
    values = dict(zip(*[iter(hyperparameter_args(hyperparameters))] * 2, strict=True))
    arguments = [
        "--inference_script", values.get("--inference_script", ""),
        "--model_archive", values.get("--model_archive", ""),
        "--source_dir", values.get("--source_dir", ""),
    ]  # fmt: skip
    return python_invocation([str(script), *arguments], where)


def _script_mode_command(
    ctx: JobContext, hyperparameters: dict[str, Any]
) -> tuple[list[str], Path, dict[str, str]]:
    """Framework script mode: unpack ``sagemaker_submit_directory``, run ``sagemaker_program``."""
    program = str(_deserialize(hyperparameters["sagemaker_program"]))
    submit = _deserialize(hyperparameters.get("sagemaker_submit_directory"))
    code_dir = ctx.base / "code"
    if submit:
        where = f"hyper-parameter sagemaker_submit_directory {submit}"
        source = ctx.workspace.local_path(str(submit))
        if source.is_file():
            try:
                objects.extract_tarball(source, code_dir)
            except Exception as exc:
                raise StepFailure(f"{where}: cannot unpack ({exc})", CLIENT_ERROR) from exc
        else:
            _stage(ctx, str(submit), str(code_dir), where)
    user_hps = {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}
    argv = python_invocation([program, *hyperparameter_args(user_hps)], f"step {ctx.step_name!r}")
    env = {
        "SAGEMAKER_PROGRAM": program,
        "SM_MODULE_DIR": str(submit or ""),
        "SM_USER_ARGS": json.dumps(hyperparameter_args(user_hps)),
    }
    return argv, code_dir, env


def hyperparameter_args(hyperparameters: dict[str, Any]) -> list[str]:
    """``--key value`` pairs, values JSON-decoded then printed as the container does."""
    args: list[str] = []
    for key, value in hyperparameters.items():
        decoded = _deserialize(value)
        args += [f"--{key}", decoded if isinstance(decoded, str) else json.dumps(decoded)]
    return args


def _training_env(
    ctx: JobContext,
    args: dict[str, Any],
    channels: dict[str, Any],
    hyperparameters: dict[str, Any],
) -> dict[str, str]:
    base = ctx.base
    hps = {k: _deserialize(v) for k, v in hyperparameters.items()}
    env = {
        "SM_MODEL_DIR": str(base / "model"),
        "SM_INPUT_DIR": str(base / "input"),
        "SM_INPUT_DATA_DIR": str(base / "input" / "data"),
        "SM_INPUT_CONFIG_DIR": str(base / "input" / "config"),
        "SM_OUTPUT_DIR": str(base / "output"),
        "SM_OUTPUT_DATA_DIR": str(base / "output" / "data"),
        "SM_OUTPUT_FAILURE": str(base / "output" / "failure"),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_HPS": json.dumps(hps),
        "SM_CURRENT_HOST": "algo-1",
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_HOST_COUNT": "1",
        "SM_CURRENT_HOST_RANK": "0",
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_NUM_GPUS": "0",
        "SM_CURRENT_INSTANCE_TYPE": str(
            (args.get("ResourceConfig") or {}).get("InstanceType", "local")
        ),
        "TRAINING_JOB_NAME": ctx.job_name,
    }
    for name in channels:
        env[f"SM_CHANNEL_{name.upper()}"] = str(base / "input" / "data" / name)
    for key, value in hps.items():
        env[f"SM_HP_{key.replace('-', '_').upper()}"] = (
            value if isinstance(value, str) else json.dumps(value)
        )
    return env


def _write_input_config(
    ctx: JobContext,
    args: dict[str, Any],
    channels: dict[str, Any],
    hyperparameters: dict[str, Any],
) -> None:
    """The ``/opt/ml/input/config/*.json`` files a training container finds."""
    config = ctx.base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    instance_type = (args.get("ResourceConfig") or {}).get("InstanceType", "local")
    documents = {
        "hyperparameters.json": hyperparameters,
        "inputdataconfig.json": {
            name: {
                "TrainingInputMode": channel.get("InputMode", "File"),
                "S3DistributionType": channel["DataSource"]["S3DataSource"].get(
                    "S3DataDistributionType", "FullyReplicated"
                ),
                "RecordWrapperType": "None",
            }
            for name, channel in channels.items()
        },
        "resourceconfig.json": {
            "current_host": "algo-1",
            "current_instance_type": instance_type,
            "hosts": ["algo-1"],
            "network_interface_name": "eth0",
        },
    }
    for name, document in documents.items():
        (config / name).write_text(json.dumps(document), encoding="utf-8")


def _final_metrics(args: dict[str, Any], log_path: Path) -> list[dict[str, Any]]:
    """Apply the job's MetricDefinitions regexes to its log; the last match wins."""
    definitions = (args.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or []
    if not definitions or not log_path.is_file():
        return []
    text = log_path.read_text(encoding="utf-8", errors="replace")
    metrics = []
    for definition in definitions:
        matches = re.findall(definition["Regex"], text)
        if matches:
            last = matches[-1][0] if isinstance(matches[-1], tuple) else matches[-1]
            try:
                metrics.append({"MetricName": definition["Name"], "Value": float(last)})
            except ValueError:
                continue
    return metrics


# --- shared ----------------------------------------------------------------------


def python_invocation(tokens: list[str], where: str) -> list[str]:
    """``[flags..., script, args...]`` after ``python`` -> the executor's interpreter argv."""
    flags = []
    rest = list(tokens)
    while rest and rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag in ("-m", "-c"):
            raise UnsupportedFeatureError(f"{where}: python {flag} (run a script file instead)")
        flags.append(flag)
    if not rest:
        raise UnsupportedFeatureError(f"{where}: python is started without a script")
    return [sys.executable, *flags, "-c", _BOOTSTRAP, *rest]


def minimal_environment(scratch: Path) -> dict[str, str]:
    """Only what a standalone program needs: no project PYTHONPATH, no credentials."""
    tmp = scratch / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        ),
        "HOME": os.environ.get("HOME", str(scratch)),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": str(tmp),
        "PYTHONPATH": "",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update({k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ})
    return env


def _environment(ctx: JobContext, step_env: dict[str, Any] | None) -> dict[str, str]:
    env = minimal_environment(ctx.scratch)
    for key, value in (step_env or {}).items():
        env[str(key)] = ctx.container_path(str(value))
    return env


def _run(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    ctx: JobContext,
    timeout: float | None,
    what: str,
) -> None:
    """Run ``argv`` with output appended to the step log; raise ``StepFailure`` if it fails."""
    cwd.mkdir(parents=True, exist_ok=True)
    ctx.log_path.parent.mkdir(parents=True, exist_ok=True)
    shown = [a for a in argv if a != _BOOTSTRAP]
    with ctx.log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(shown)}\n  (cwd {cwd})\n")
        log.flush()
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise StepFailure(
                f"MaxRuntimeExceeded: the {what} ran longer than {timeout:.0f} s "
                f"(StoppingCondition.MaxRuntimeInSeconds). {_tail(ctx.log_path)}",
                ALGORITHM_ERROR,
            ) from None
        except BaseException:
            _kill_group(process)
            raise
    if returncode == 0:
        return
    failure = ctx.base / "output" / "failure"
    detail = (
        failure.read_text(encoding="utf-8", errors="replace").strip() if failure.is_file() else ""
    )
    if returncode < 0:
        # Killed by a signal (the OOM killer, a preempted host): SageMaker reports an
        # internal job error, which SageMakerJobStepRetryPolicy may retry.
        reason = f"{JOB_INTERNAL_ERROR}: the {what} was killed by signal {-returncode}"
        exception_type = JOB_INTERNAL_ERROR
    else:
        reason = f"{ALGORITHM_ERROR}: the {what} exited with code {returncode}"
        exception_type = ALGORITHM_ERROR
    if detail:
        reason += f"; failure file: {detail}"
    raise StepFailure(f"{reason}. {_tail(ctx.log_path)}", exception_type)


def _kill_group(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(log_path: Path) -> str:
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    tail = "\n".join(lines[-LOG_TAIL_LINES:])
    return f"Log {log_path} (last {min(len(lines), LOG_TAIL_LINES)} lines):\n{tail}"


def _stage(ctx: JobContext, uri: str, local: str, what: str) -> None:
    try:
        objects.stage_input(ctx.workspace, str(uri), Path(local))
    except FileNotFoundError as exc:
        raise StepFailure(
            f"{CLIENT_ERROR}: {what}: {exc}. Check the upstream step or the parameter that "
            "names this location.",
            CLIENT_ERROR,
        ) from exc
    except ValueError as exc:
        raise StepFailure(f"{CLIENT_ERROR}: {what}: {exc}", CLIENT_ERROR) from exc
    except OSError as exc:
        raise StepFailure(f"{SERVICE_FAULT}: staging {what} failed: {exc}", SERVICE_FAULT) from exc


def _upload(ctx: JobContext, local_dir: Path, uri: str) -> dict[str, str]:
    try:
        return objects.upload_directory(ctx.workspace, local_dir, uri)
    except OSError as exc:
        raise StepFailure(
            f"{SERVICE_FAULT}: uploading to {uri} failed: {exc}", SERVICE_FAULT
        ) from exc


def _tar(ctx: JobContext, source: Path, uri: str) -> str:
    try:
        return objects.write_tarball_atomic(source, ctx.workspace.local_path(uri))
    except OSError as exc:
        raise StepFailure(f"{SERVICE_FAULT}: writing {uri} failed: {exc}", SERVICE_FAULT) from exc


def _local_path(ctx: JobContext, container_path: str) -> str:
    if not _CONTAINER_PATH.match(str(container_path)):
        raise UnsupportedFeatureError(
            f"step {ctx.step_name!r}: LocalPath {container_path!r} is outside /opt/ml, "
            "which SageMaker Processing does not allow either"
        )
    return ctx.container_path(str(container_path))


def _max_runtime(args: dict[str, Any]) -> float | None:
    seconds = (args.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    return float(seconds) if seconds else None


def _deserialize(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise UnsupportedFeatureError(f"{where}: unsupported {what}")
