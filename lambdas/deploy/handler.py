"""Lambda: model package approved -> deploy it (blue/green); rejected -> never deploy.

Subscribed by an EventBridge rule to ``SageMaker Model Package State Change``
events; locally the workspace event bus calls this same function.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipelines.deploy import backend_for_context, handle_state_change


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    backend, describe = backend_for_context(context)
    result = handle_state_change(event, backend, describe).as_dict()
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # CloudWatch Logs; the local CLI prints its own
        print(json.dumps(result, default=str))
    return result
