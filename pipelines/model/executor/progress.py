"""Per-step progress display of a local pipeline execution (rich, on stderr)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

_MARKS = {"Succeeded": "[green]✓[/]", "Failed": "[red]✗[/]", "Reused": "[cyan]↺[/]"}


class StepProgress:
    """One line per step: spinner while it runs, then its outcome and duration."""

    def __init__(self, pipeline_name: str, execution_id: str) -> None:
        self.console = Console(stderr=True)
        self.header = f"[bold]{pipeline_name}[/] execution [bold]{execution_id}[/]"
        self._progress = Progress(
            SpinnerColumn(finished_text=""),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._labels: dict[str, str] = {}

    def __enter__(self) -> StepProgress:
        self.console.print(self.header)
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def start(self, name: str, step_type: str) -> None:
        """A step started: add its line with a spinner."""
        self._labels[name] = f"{name} [dim]({step_type})[/]"
        self._tasks[name] = self._progress.add_task(self._labels[name], total=1)

    def retrying(self, name: str, attempt: int, exception_type: str, wait: float) -> None:
        """An attempt failed and a RetryPolicy applies: say so on the step's line."""
        self._progress.update(
            self._tasks[name],
            description=f"{self._labels[name]} [yellow]attempt {attempt} failed "
            f"({exception_type}), retrying in {wait:.1f} s[/]",
        )

    def finish(self, name: str, status: str, note: str = "") -> None:
        """Replace the spinner by the outcome mark and freeze the elapsed time."""
        suffix = f" [dim]{note}[/]" if note else ""
        self._progress.update(
            self._tasks[name],
            description=f"{_MARKS.get(status, status)} {self._labels[name]}{suffix}",
            completed=1,
        )
        self._progress.stop_task(self._tasks[name])

    def reused(self, name: str, step_type: str) -> None:
        """A resumed execution keeps this step's earlier success."""
        self.start(name, step_type)
        self.finish(name, "Reused", "succeeded before; reused on resume")


class NoProgress:
    """Same interface, prints nothing (``progress=False``)."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def start(self, name: str, step_type: str) -> None: ...

    def retrying(self, name: str, attempt: int, exception_type: str, wait: float) -> None: ...

    def finish(self, name: str, status: str, note: str = "") -> None: ...

    def reused(self, name: str, step_type: str) -> None: ...


def make_progress(
    enabled: bool, pipeline_name: str, execution_id: str
) -> StepProgress | NoProgress:
    """The rich display, or a silent stand-in when ``progress=False``."""
    return StepProgress(pipeline_name, execution_id) if enabled else NoProgress()
