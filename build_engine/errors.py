"""Typed errors raised while building an engine bundle; each carries what is needed to act on it."""

from __future__ import annotations

from engine.errors import EngineError


class EngineBuildError(EngineError):
    """A build stage failed: export, validation, quantization, TensorRT build or writing the bundle.

    ``output`` and ``max_abs_diff`` are set when a validation check fails, so a caller (or a test)
    can tell which head drifted and by how much without parsing the message.
    """

    def __init__(
        self,
        reason: str,
        *,
        stage: str = "build",
        output: str | None = None,
        max_abs_diff: float | None = None,
        agreement: float | None = None,
    ) -> None:
        where = f"[{stage}]" + (f" output {output!r}" if output else "")
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.stage = stage
        self.output = output
        self.max_abs_diff = max_abs_diff
        self.agreement = agreement
