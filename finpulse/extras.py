"""Which optional extra of ``pyproject.toml`` installs which package, so every "missing package" message agrees.

The base install runs a CPU worker on an ONNX bundle; training, building bundles and GPU inference
need the packages below. Keep this table in step with ``[project.optional-dependencies]``
(``tests/unit/test_architecture.py`` checks it).
"""

from __future__ import annotations

#: top-level import name -> the extra that installs it
EXTRA_FOR_MODULE: dict[str, str] = {
    "torch": "train",
    "transformers": "train",
    "safetensors": "train",
    "onnx": "build",
    "onnxscript": "build",
    "tensorrt": "gpu",
    "matplotlib": "backtest",
}


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, needed_for: str, extra: str | None = None) -> None:
        self.module = module
        self.extra = extra or EXTRA_FOR_MODULE.get(module)
        hint = f"pip install 'finpulse[{self.extra}]'" if self.extra else f"pip install {module}"
        super().__init__(f"{needed_for} needs the Python package {module!r}, which is not installed: {hint}")
        self.name = module


def missing_extra(exc: ModuleNotFoundError, needed_for: str, extra: str | None = None) -> MissingExtra | None:
    """A :class:`MissingExtra` when ``exc`` is about an optional third-party package, else ``None``.

    ``extra`` names the extra to install when the caller knows better than the table (torch for a
    GPU backend comes with ``gpu``). ``None`` means the import failed for another reason (a missing
    finpulse module is a bug, not a missing extra), so the caller should re-raise ``exc``.
    """
    top = (exc.name or "").split(".")[0]
    return MissingExtra(top, needed_for, extra) if top in EXTRA_FOR_MODULE else None
