"""Deploy approved model packages behind an endpoint, locally or on SageMaker."""

from pipelines.deploy.backend import DeploymentResult, EndpointBackend
from pipelines.deploy.on_approval import backend_for_context, handle_state_change

__all__ = ["DeploymentResult", "EndpointBackend", "backend_for_context", "handle_state_change"]
