"""How the stream scores: in process with the deployed model, or over HTTP/SageMaker.

All three send the model *named* features, so the endpoint maps them to its own
feature order (``inference.input_fn`` JSON records), and all three load the
same ``inference.py`` semantics: a NaN is a missing value.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.core.params import ModelParameters
from pipelines.serving.scoring.batch import LoadedModel


class EndpointError(Exception):
    """The endpoint did not return scores; the message says which and why."""


def _json_value(value: Any) -> Any:
    """A feature value for a JSON record: None for missing, text as is (categorical)."""
    if value is None or isinstance(value, str):
        return value
    return None if math.isnan(value) else float(value)


def _instances(matrix: np.ndarray, columns: list[str], explain: int = 0) -> bytes:
    """inference.py's JSON request; ``explain`` asks for each row's top contributions."""
    rows = [
        {name: _json_value(v) for name, v in zip(columns, row, strict=True)}
        for row in matrix.tolist()
    ]
    return json.dumps({"instances": rows, **({"explain": explain} if explain else {})}).encode()


def _scores(body: bytes, expected: int, where: str) -> np.ndarray:
    try:
        predictions = json.loads(body)["predictions"]
        scores = np.array([float(p["score"]) for p in predictions], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise EndpointError(f"{where} returned no scores ({exc}): {body[:200]!r}") from exc
    if scores.size != expected:
        raise EndpointError(f"{where} returned {scores.size} scores for {expected} transactions")
    return scores


@dataclass
class InProcessModel:
    """The deployed model version, loaded through its own ``inference.py``."""

    loaded: LoadedModel

    @property
    def feature_columns(self) -> list[str]:
        return self.loaded.bundle.feature_columns

    @property
    def version(self) -> int:
        return int(self.loaded.bundle.version)

    @property
    def threshold(self) -> float:
        return self.loaded.threshold

    @property
    def label_delay_days(self) -> int | None:
        value = self.loaded.bundle.feature_set.get("label_delay_days")
        return None if value is None else int(value)

    def score(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.loaded.handler.predict(matrix), dtype=np.float64).ravel()

    def explain(self, matrix: np.ndarray) -> list[dict] | None:
        """``inference.contributions`` (XGBoost pred_contribs) when the handler provides it."""
        from pipelines.serving.stream.core import explain_top_n

        contributions = getattr(self.loaded.handler.module, "contributions", None)
        if contributions is None:
            return None
        return contributions(matrix, self.loaded.handler.model, top_n=explain_top_n())


@dataclass
class HttpEndpointModel(InProcessModel):
    """Scores from a running endpoint (``fraudops serve`` or any /invocations URL).

    Version, threshold and reason codes come from the same model version in the
    local registry, so alerts explain the scores the endpoint gave.
    """

    url: str = ""
    timeout_seconds: float = 10.0

    def score(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] == 0:
            return np.empty(0)
        target = self.url if self.url.rstrip("/").endswith("/invocations") else (
            self.url.rstrip("/") + "/invocations"
        )
        request = urllib.request.Request(
            target,
            data=_instances(matrix, self.feature_columns),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise EndpointError(f"endpoint {target} answered {exc.code}: {detail}") from exc
        except OSError as exc:
            raise EndpointError(f"endpoint {target} is unreachable: {exc}") from exc
        return _scores(body, matrix.shape[0], f"endpoint {target}")


@dataclass
class SageMakerEndpointModel:
    """A SageMaker endpoint through ``sagemaker-runtime`` ``invoke_endpoint`` (the Lambda)."""

    endpoint_name: str
    feature_columns: list[str]
    threshold: float
    version: int
    client: Any

    def score(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] == 0:
            return np.empty(0)
        return _scores(self._invoke(matrix), matrix.shape[0], f"endpoint {self.endpoint_name}")

    def explain(self, matrix: np.ndarray) -> list[dict] | None:
        """The alerted rows' top contributions (``inference.py``'s ``"explain": N``)."""
        from pipelines.serving.stream.core import explain_top_n  # core imports this module

        if matrix.shape[0] == 0:
            return []
        body = json.loads(self._invoke(matrix, explain=explain_top_n()))
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list) or len(predictions) != matrix.shape[0] or not all(
                isinstance(p, dict) and isinstance(p.get("top"), list) for p in predictions):
            raise EndpointError(f"endpoint {self.endpoint_name} answered an explain request "
                                "without each row's top contributions")
        return [{"bias": p.get("bias"), "top": p["top"]} for p in predictions]

    def _invoke(self, matrix: np.ndarray, explain: int = 0) -> bytes:
        response = self.client.invoke_endpoint(
            EndpointName=self.endpoint_name, ContentType="application/json",
            Accept="application/json", Body=_instances(matrix, self.feature_columns, explain),
        )
        return response["Body"].read()


@dataclass(frozen=True)
class DeployedModel:
    """The model package a SageMaker endpoint serves and the run parameters it carries."""

    package_arn: str
    version: int
    parameters: ModelParameters


class DeployedModelLookup:
    """Which approved model package an endpoint serves, from SageMaker's own records.

    endpoint -> endpoint config -> model -> ``ModelPackageName`` (the deploy
    handler creates the model from the package) -> the package's version and
    CustomerMetadataProperties. No stack parameter can then disagree with the
    model. One DescribeEndpoint per :meth:`current`; the rest is looked up again
    only when a deployment switched the endpoint to another config.
    """

    def __init__(self, client: Any, endpoint_name: str) -> None:
        self.client = client
        self.endpoint_name = endpoint_name
        self._config: str | None = None
        self._model: DeployedModel | None = None

    def current(self) -> DeployedModel:
        endpoint = self.client.describe_endpoint(EndpointName=self.endpoint_name)
        config = endpoint["EndpointConfigName"]
        if config != self._config or self._model is None:
            self._model = self._describe(config)
            self._config = config
        return self._model

    def _describe(self, config: str) -> DeployedModel:
        variants = self.client.describe_endpoint_config(EndpointConfigName=config)[
            "ProductionVariants"]
        model = self.client.describe_model(ModelName=variants[0]["ModelName"])
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        arn = container.get("ModelPackageName")
        if not arn:
            raise EndpointError(
                f"endpoint {self.endpoint_name} serves model {variants[0]['ModelName']}, "
                "which was not created from a model package; deploy an approved package "
                "through the deploy handler"
            )
        package = self.client.describe_model_package(ModelPackageName=arn)
        parameters = ModelParameters.from_metadata(
            package.get("CustomerMetadataProperties"), f"model package {arn}"
        )
        return DeployedModel(arn, int(package["ModelPackageVersion"]), parameters)
