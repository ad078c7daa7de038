"""In-process event bus shaped like Amazon EventBridge.

Locally, the same Lambda handlers that EventBridge rules invoke on AWS are
called synchronously by this bus, with the same event shape
(``{"version", "id", "source", "detail-type", "time", "account", "region",
"resources", "detail"}``) and the same rule patterns. A failing target never
fails the publisher (EventBridge semantics): its error is returned in the
:class:`Delivery` and logged, so an approval stays recorded even when the
deployment it triggers fails.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core.workspace import Workspace

LOG = logging.getLogger(__name__)

LOCAL_ACCOUNT = "000000000000"
LOCAL_REGION = "local"

MODEL_PACKAGE_STATE_CHANGE = "SageMaker Model Package State Change"
SAGEMAKER_SOURCE = "aws.sagemaker"

Target = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class Rule:
    """An EventBridge rule: a pattern and one target.

    ``target`` is a callable ``(event, context)`` or an import string
    ``"package.module:function"`` resolved on first delivery, so declaring a
    rule never imports the handler (and its dependencies) up front.
    """

    name: str
    pattern: Mapping[str, Any]
    target: Target | str


@dataclass(frozen=True)
class Delivery:
    """What happened when one rule's target received one event."""

    rule: str
    event_id: str
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class LocalLambdaContext:
    """The parts of the Lambda context object handlers use, plus the workspace.

    On AWS handlers find their configuration in environment variables; locally
    the bus tells them which workspace they act on.
    """

    function_name: str
    workspace_root: str | None = None
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_ms: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.timeout_ms


# Rules every local workspace bus carries; infra/ declares the same rules for
# EventBridge. Rejections are delivered too so the handler records "not deployed".
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        name="deploy-on-approval",
        pattern={
            "source": [SAGEMAKER_SOURCE],
            "detail-type": [MODEL_PACKAGE_STATE_CHANGE],
            "detail": {"ModelApprovalStatus": ["Approved", "Rejected"]},
        },
        target="lambdas.deploy.handler:handler",
    ),
    Rule(
        name="notify-pipeline-failure",
        pattern={
            "source": [SAGEMAKER_SOURCE],
            "detail-type": ["SageMaker Model Building Pipeline Execution Step Status Change"],
            "detail": {"currentStepStatus": ["Failed"]},
        },
        target="lambdas.failure_notification.handler:handler",
    ),
)


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """EventBridge pattern matching for exact values and nested objects.

    A list in the pattern means "any of these values"; a nested mapping
    matches the nested object. If the event value is itself a list, any
    overlap matches (as in EventBridge).
    """
    for key, expected in pattern.items():
        if key not in event:
            return False
        actual = event[key]
        if isinstance(expected, Mapping):
            if not isinstance(actual, Mapping) or not matches(expected, actual):
                return False
            continue
        allowed = expected if isinstance(expected, list | tuple) else [expected]
        values = actual if isinstance(actual, list) else [actual]
        if not any(value in allowed for value in values):
            return False
    return True


def _resolve_target(target: Target | str) -> Target:
    """Import a ``"module:function"`` target the way the Lambda runtime does.

    ``lambdas`` is installed with the package (editable or not), as it sits at
    the root of the Lambda bundle on AWS, so the import needs no path set-up.
    """
    if callable(target):
        return target
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"rule target {target!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), attribute)


class EventBus:
    """Delivers events synchronously to the targets of every matching rule."""

    def __init__(
        self,
        name: str = "default",
        context_factory: Callable[[Rule], Any] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self._rules: dict[str, Rule] = {}
        self._context_factory = context_factory or (lambda rule: LocalLambdaContext(rule.name))
        self._log_path = log_path
        self._log_lock = threading.Lock()

    def put_rule(self, name: str, pattern: Mapping[str, Any], target: Target | str) -> Rule:
        """Add (or replace) the rule ``name``."""
        rule = Rule(name=name, pattern=dict(pattern), target=target)
        self._rules[name] = rule
        return rule

    def remove_rule(self, name: str) -> None:
        self._rules.pop(name, None)

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def publish(
        self,
        source: str,
        detail_type: str,
        detail: Mapping[str, Any],
        resources: list[str] | None = None,
    ) -> list[Delivery]:
        """Build an EventBridge-shaped event and deliver it; return the deliveries."""
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "source": source,
            "detail-type": detail_type,
            "account": LOCAL_ACCOUNT,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": LOCAL_REGION,
            "resources": list(resources or []),
            "detail": dict(detail),
        }
        return self.deliver(event)

    def deliver(self, event: dict[str, Any]) -> list[Delivery]:
        """Call each matching rule's target with ``(event, context)``."""
        self._append_log({"event": event})
        deliveries = []
        for rule in self.rules:
            if not matches(rule.pattern, event):
                continue
            deliveries.append(self._invoke(rule, event))
        return deliveries

    def _invoke(self, rule: Rule, event: dict[str, Any]) -> Delivery:
        try:
            result = _resolve_target(rule.target)(event, self._context_factory(rule))
        except Exception as exc:  # a failing target must not fail the publisher
            # The caller reports delivery.error; the traceback goes to the event log.
            LOG.debug("rule %s failed on event %s", rule.name, event["id"], exc_info=True)
            delivery = Delivery(rule.name, event["id"], error=f"{type(exc).__name__}: {exc}")
            trace = traceback.format_exc()
        else:
            delivery = Delivery(rule.name, event["id"], result=result)
            trace = None
        record = {"rule": rule.name, "event_id": event["id"], "error": delivery.error}
        if trace:
            record["traceback"] = trace
        self._append_log({"delivery": record})
        return delivery

    def _append_log(self, record: dict[str, Any]) -> None:
        if self._log_path is None:
            return
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=str, sort_keys=True)
        with self._log_lock, self._log_path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")


def local_bus(workspace: Workspace, rules: tuple[Rule, ...] = DEFAULT_RULES) -> EventBus:
    """The bus of one workspace: the default rules, events logged under ``state/``.

    Targets receive a :class:`LocalLambdaContext` naming the workspace root.
    """
    root = str(workspace.root)

    def context_for(rule: Rule) -> LocalLambdaContext:
        return LocalLambdaContext(function_name=rule.name, workspace_root=root)

    bus = EventBus(
        name=f"local:{os.path.basename(root)}",
        context_factory=context_for,
        log_path=workspace.state_dir / "events.jsonl",
    )
    for rule in rules:
        bus.put_rule(rule.name, rule.pattern, rule.target)
    return bus
