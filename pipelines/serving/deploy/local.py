"""Blue/green deployment to a local endpoint process, with rollback.

The new version starts beside the old one on its own port (detached, so it
outlives the CLI), must answer ``/ping`` and a sample ``/invocations``, and
only then becomes the current endpoint (``<workspace>/state/endpoint.json``)
and the old process is stopped. If anything fails, the new process is stopped,
the old one keeps serving, and the failure is recorded and notified.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core.code import import_root
from pipelines.core.fileio import write_json_atomically
from pipelines.core.notifications import FAILURES_TOPIC, Notifier, OutboxNotifier
from pipelines.core.workspace import Workspace
from pipelines.model.deployments import DeploymentHistory, utc_now
from pipelines.serving.deploy.artifacts import ArtifactError, ModelBundle, materialize
from pipelines.serving.deploy.backend import (
    FAILED,
    IN_SERVICE,
    ROLLED_BACK,
    SKIPPED,
    DeploymentResult,
)

SERVER_MODULE = "pipelines.serving.endpoint.server"
STATE_FILE = "endpoint.json"
DEPLOY_ACTOR = "deploy-on-approval"  # the service identity, as the Lambda's role on AWS
AUDIT_ACTIONS = {
    IN_SERVICE: "deploy.deploy",
    ROLLED_BACK: "deploy.rollback",
    FAILED: "deploy.rollback",
    SKIPPED: "deploy.skip",
}


class DeployError(Exception):
    """The new endpoint did not start or failed its health check."""


def endpoint_state_path(workspace: Workspace) -> Path:
    return workspace.state_dir / STATE_FILE


def read_endpoint_state(workspace: Workspace) -> dict[str, Any] | None:
    """The current endpoint record, or None if nothing was ever deployed."""
    path = endpoint_state_path(workspace)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def is_endpoint_process(pid: int | None) -> bool:
    """True if ``pid`` is a live endpoint server (not a recycled pid, not a zombie)."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return SERVER_MODULE.encode() in cmdline and state != "Z"
    try:  # no /proc (macOS): trust the pid
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop_endpoint_process(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL after ``timeout`` seconds."""
    if not is_endpoint_process(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_endpoint_process(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def http_request(
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One request; HTTP errors are returned as (status, body), not raised."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sample_csv_row(bundle: ModelBundle) -> bytes:
    """A row of zeros in the model's feature order: every feature is numeric."""
    return ",".join("0" for _ in bundle.feature_columns).encode()


def health_check(url: str, bundle: ModelBundle, timeout: float = 5.0) -> None:
    """``/ping`` must be 200 and a sample invocation must return a score."""
    try:
        status, body = http_request(f"{url}/ping", timeout=timeout)
        if status != 200:
            raise DeployError(f"/ping answered {status}: {body[:200]!r}")
        status, body = http_request(
            f"{url}/invocations",
            data=sample_csv_row(bundle),
            headers={"Content-Type": "text/csv", "Accept": "text/csv"},
            timeout=timeout,
        )
    except OSError as exc:
        raise DeployError(f"health check could not reach {url}: {exc}") from exc
    if status != 200 or not body.strip():
        raise DeployError(f"sample /invocations answered {status}: {body[:300]!r}")


class LocalEndpointBackend:
    """Deploys model packages as detached local endpoint processes."""

    name = "local"

    def __init__(
        self,
        workspace: Workspace,
        notifier: Notifier | None = None,
        start_timeout: float = 60.0,
        health_timeout: float = 10.0,
    ) -> None:
        self.workspace = workspace
        self.history = DeploymentHistory(workspace.registry_db)
        self.notifier = notifier or OutboxNotifier(workspace.outbox)
        self.start_timeout = start_timeout
        self.health_timeout = health_timeout

    # --- state -----------------------------------------------------------------
    def current(self) -> dict[str, Any] | None:
        """The current endpoint record, with ``alive`` telling if its process runs."""
        state = read_endpoint_state(self.workspace)
        if state is not None:
            state["alive"] = is_endpoint_process(state.get("pid"))
        return state

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One deployment at a time per workspace."""
        self.workspace.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.workspace.state_dir / "deploy.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _record(self, **fields: Any) -> int:
        """Keep the attempt in the deployment history and the workspace audit trail."""
        from pipelines.compliance.audit import committing

        details = {key: value for key, value in fields.items() if key != "model_package_arn"}
        # Audited with the history row's commit, recovered if the process dies right after.
        with committing(
            self.workspace,
            AUDIT_ACTIONS[fields["status"]],
            fields["model_package_arn"],
            details,
            actor=DEPLOY_ACTOR,
            when_marked_in=self.history.path,
        ) as commit:
            deployment_id = self.history.record(commit=commit, **fields)
            commit.outcome["deployment_id"] = deployment_id
        return deployment_id

    # --- deploy ----------------------------------------------------------------
    def deploy(self, package: dict[str, Any]) -> DeploymentResult:
        """Start, check, switch, stop the old one; roll back on any failure."""
        with self._lock():
            started_at = utc_now()
            previous = self.current()
            previous_arn = previous["model_package_arn"] if previous else None
            arn = package["ModelPackageArn"]
            version = int(package["ModelPackageVersion"])
            try:
                bundle = materialize(package, self.workspace)
                info = self._start_checked(bundle)
            except (ArtifactError, DeployError) as exc:
                return self._roll_back(arn, version, previous, started_at, str(exc))
            state = {
                "model_package_arn": arn,
                "group": bundle.group,
                "version": version,
                "pid": info["pid"],
                "port": info["port"],
                "url": info["url"],
                "model_dir": str(bundle.model_dir),
                "code_dir": str(bundle.code_dir),
                "program": bundle.program,
                "log_file": info["log_file"],
                "deployed_at": utc_now(),
            }
            write_json_atomically(
                endpoint_state_path(self.workspace), state, indent=2, sort_keys=True
            )
            if previous and previous.get("pid") != info["pid"]:
                stop_endpoint_process(previous["pid"])
            message = f"serving version {version} at {info['url']}"
            deployment_id = self._record(
                model_package_arn=arn,
                version=version,
                backend=self.name,
                status=IN_SERVICE,
                endpoint_url=info["url"],
                port=info["port"],
                pid=info["pid"],
                previous_model_package_arn=previous_arn,
                message=message,
                started_at=started_at,
            )
            return DeploymentResult(
                status=IN_SERVICE,
                model_package_arn=arn,
                version=version,
                endpoint_url=info["url"],
                message=message,
                deployment_id=deployment_id,
            )

    def skip(self, package: dict[str, Any], reason: str) -> DeploymentResult:
        """Record that a decision deployed nothing (a rejection): the audit trail shows it."""
        arn = package["ModelPackageArn"]
        version = int(package["ModelPackageVersion"])
        deployment_id = self._record(
            model_package_arn=arn,
            version=version,
            backend=self.name,
            status=SKIPPED,
            message=reason,
        )
        return DeploymentResult(
            status=SKIPPED,
            model_package_arn=arn,
            version=version,
            message=reason,
            deployment_id=deployment_id,
        )

    def _roll_back(
        self,
        arn: str,
        version: int,
        previous: dict[str, Any] | None,
        started_at: str,
        reason: str,
    ) -> DeploymentResult:
        """Record the failed attempt; the previous endpoint (if any) was never touched."""
        if previous and previous.get("alive"):
            status = ROLLED_BACK
            message = (
                f"version {version} failed ({reason}); version {previous['version']} "
                f"keeps serving at {previous['url']}"
            )
        else:
            status = FAILED
            message = f"version {version} failed ({reason}); no endpoint is serving"
        deployment_id = self._record(
            model_package_arn=arn,
            version=version,
            backend=self.name,
            status=status,
            previous_model_package_arn=previous["model_package_arn"] if previous else None,
            message=message,
            started_at=started_at,
        )
        self.notifier.publish(
            FAILURES_TOPIC,
            f"Deployment of model version {version} failed",
            {"stage": "deploy", "model_package_arn": arn, "status": status, "error": message},
        )
        return DeploymentResult(
            status=status,
            model_package_arn=arn,
            version=version,
            endpoint_url=previous["url"] if previous and previous.get("alive") else None,
            message=message,
            deployment_id=deployment_id,
        )

    def _start_checked(self, bundle: ModelBundle) -> dict[str, Any]:
        """Start the new endpoint and health-check it; stop it again if unhealthy."""
        info = self.start(bundle)
        try:
            health_check(info["url"], bundle, timeout=self.health_timeout)
        except DeployError:
            stop_endpoint_process(info["pid"])
            raise
        return info

    def start(self, bundle: ModelBundle) -> dict[str, Any]:
        """Spawn a detached endpoint process and wait until it listens."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        run_name = f"{bundle.group}-v{bundle.version}-{stamp}"
        run_dir = self.workspace.state_dir / "endpoints" / run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        ready_file = run_dir / "ready.json"
        log_file = self.workspace.logs / f"endpoint-{bundle.group}-v{bundle.version}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--model-dir",
            str(bundle.model_dir),
            "--code-dir",
            str(bundle.code_dir),
            "--program",
            bundle.program,
            "--port",
            "0",
            "--ready-file",
            str(ready_file),
            "--log-file",
            str(log_file),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(import_root()), env.get("PYTHONPATH", "")) if p
        )
        with (run_dir / "stderr.log").open("ab") as stderr:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        info = self._wait_ready(process, ready_file, log_file, run_dir / "stderr.log")
        info["log_file"] = str(log_file)
        return info

    def _wait_ready(
        self, process: subprocess.Popen[bytes], ready_file: Path, log_file: Path, stderr: Path
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if ready_file.is_file():
                return json.loads(ready_file.read_text(encoding="utf-8"))
            if process.poll() is not None:
                raise DeployError(
                    f"endpoint process exited with code {process.returncode} while loading "
                    f"the model: {_tail(log_file) or _tail(stderr)}"
                )
            time.sleep(0.05)
        process.kill()
        process.wait()
        raise DeployError(
            f"endpoint did not become ready within {self.start_timeout:.0f} s (log: {log_file})"
        )

    def stop(self) -> dict[str, Any] | None:
        """Stop the current endpoint and forget it; returns what was stopped."""
        with self._lock():
            state = self.current()
            if state is None:
                return None
            stop_endpoint_process(state["pid"])
            endpoint_state_path(self.workspace).unlink(missing_ok=True)
            return state


def _tail(path: Path, lines: int = 5) -> str:
    """The last error lines of a log, for the failure message."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])
