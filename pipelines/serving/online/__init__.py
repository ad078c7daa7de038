"""Online features: the declared feature set computed one transaction at a time.

* ``engine``: :class:`OnlineFeatureEngine` compiles ``pipelines.data.features.definitions``
  (aggregates -> sliding frames, feature SQL -> Python) and computes exactly the
  batch engines' values, label delay and late labels included.
* ``store``: the embedded state store (SQLite under ``state/online/``, incremental commits)
  and the DynamoDB store the Lambda uses.
* ``reasons``: reason-code sentences for every feature.
"""

from pipelines.serving.online.engine import OnlineFeatureEngine, OutOfOrder
from pipelines.serving.online.reasons import TEMPLATES, explain
from pipelines.serving.online.store import DynamoStateStore, LocalStateStore, StateError

__all__ = [
    "TEMPLATES",
    "DynamoStateStore",
    "LocalStateStore",
    "OnlineFeatureEngine",
    "OutOfOrder",
    "StateError",
    "explain",
]
