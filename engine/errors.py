"""Typed errors raised by the inference engine; each carries the context needed to act on it."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class for every error the engine raises."""


class ModelFormatError(EngineError):
    """A checkpoint or bundle directory is missing files or has an unexpected layout."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BackendUnavailable(EngineError):
    """The requested backend cannot run here (missing package, no GPU, no engine file)."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} unavailable: {reason}")
        self.backend = backend
        self.reason = reason


class InferenceInputError(EngineError, ValueError):
    """A batch handed to ``Backend.infer`` is malformed (shape, dtype, size)."""


class InferenceOutputError(EngineError):
    """A backend returned outputs that do not match its inputs one for one."""
