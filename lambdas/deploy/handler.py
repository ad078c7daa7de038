"""Lambda: model package approved -> deploy it (blue/green); rejected -> never deploy.

Subscribed by EventBridge rules to ``SageMaker Model Package State Change`` and
``SageMaker Endpoint State Change`` events, and invoked by the
promote-to-production CodePipeline in production (see
``pipelines.serving.deploy.promotion``); locally the workspace event bus calls this
same function with model-package events only.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipelines.serving.deploy import backend_for_context, handle_state_change
from pipelines.serving.deploy.aws import SageMakerEndpointBackend
from pipelines.serving.deploy.promotion import handle_aws_event


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    backend, describe = backend_for_context(context)
    if isinstance(backend, SageMakerEndpointBackend):
        result = handle_aws_event(event, backend, describe)
    else:
        result = handle_state_change(event, backend, describe).as_dict()
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # CloudWatch Logs; the local CLI prints its own
        # The result only, never the event: CodePipeline events carry credentials.
        print(json.dumps(result, default=str))
    return result
