"""Load a SageMaker inference handler (``inference.py``) the way the container does.

The handler file is imported by path from the model's source directory, with
that directory on ``sys.path`` so its sibling imports work, and driven through
``model_fn``/``input_fn``/``predict_fn``/``output_fn``. The endpoint server
and batch scoring share this wrapper, so both score with exactly the code the
SageMaker endpoint and batch transform run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REQUIRED_FUNCTIONS = ("model_fn", "input_fn", "predict_fn", "output_fn")

_MODULES: dict[Path, ModuleType] = {}
_MODULES_LOCK = threading.Lock()


class HandlerError(Exception):
    """The handler file is missing or lacks a required function."""


class _NeverRaised(Exception):
    """Stands in for an error class the handler does not define."""


def load_inference_module(code_dir: Path, program: str = "inference.py") -> ModuleType:
    """Import ``code_dir/program`` once per process and check its four functions."""
    path = (Path(code_dir) / program).resolve()
    if not path.is_file():
        raise HandlerError(f"inference handler {path} does not exist")
    with _MODULES_LOCK:
        if path in _MODULES:
            return _MODULES[path]
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
        name = f"_fraudops_inference_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise HandlerError(f"cannot import inference handler {path}")
        module = importlib.util.module_from_spec(spec)
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        missing = [fn for fn in REQUIRED_FUNCTIONS if not callable(getattr(module, fn, None))]
        if missing:
            raise HandlerError(f"inference handler {path} lacks {', '.join(missing)}")
        _MODULES[path] = module
        return module


@dataclass
class InferenceHandler:
    """A loaded model and its handler functions.

    ``predict_lock`` serialises ``predict_fn``: XGBoost's in-place predict is
    documented thread-safe, but a handler may use a DMatrix path or mutate
    state, and on the two-core hosts this runs on the lock costs nothing
    measurable (bench/endpoint.py reports both).
    """

    module: ModuleType
    model: Any
    predict_lock: threading.Lock | None = field(default_factory=threading.Lock)

    @classmethod
    def load(
        cls, model_dir: Path, code_dir: Path, program: str = "inference.py", lock: bool = True
    ) -> InferenceHandler:
        module = load_inference_module(code_dir, program)
        model = module.model_fn(str(model_dir))
        return cls(module=module, model=model, predict_lock=threading.Lock() if lock else None)

    @property
    def bad_request_error(self) -> type[BaseException]:
        return getattr(self.module, "BadRequest", _NeverRaised)

    @property
    def unsupported_media_error(self) -> type[BaseException]:
        return getattr(self.module, "UnsupportedMediaType", _NeverRaised)

    def parse(self, body: bytes | str, content_type: str) -> Any:
        return self.module.input_fn(body, content_type)

    def predict(self, data: Any) -> Any:
        if self.predict_lock is None:
            return self.module.predict_fn(data, self.model)
        with self.predict_lock:
            return self.module.predict_fn(data, self.model)

    def render(self, prediction: Any, accept: str) -> tuple[bytes, str]:
        """Run ``output_fn``; accept the toolkit's three return styles."""
        output = self.module.output_fn(prediction, accept)
        content_type = accept
        if isinstance(output, tuple):
            output, content_type = output
        if isinstance(output, str):
            output = output.encode("utf-8")
        return bytes(output), content_type

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        """Parse, predict and render one request (handler errors propagate)."""
        return self.render(self.predict(self.parse(body, content_type)), accept)
