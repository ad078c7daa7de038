"""Deploy approved model packages behind an endpoint, locally or on SageMaker."""

from pipelines.serving.deploy.backend import DeploymentResult, EndpointBackend
from pipelines.serving.deploy.on_approval import backend_for_context, handle_state_change

__all__ = ["DeploymentResult", "EndpointBackend", "backend_for_context", "handle_state_change"]
