"""Backend choice is explicit: `auto` says what it skipped and why; a named backend never falls back."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import BackendUnavailable, ModelFormatError
from engine.runtime import AUTO_ORDER, load_classifier
from engine.settings import EngineSettings


def test_auto_on_a_plain_checkpoint_reports_every_skip(tiny_model_dir: Path) -> None:
    clf = load_classifier(EngineSettings(backend="auto"), tiny_model_dir)
    desc = clf.describe()
    chosen = desc["backend"]
    skipped = desc["skipped_backends"]
    # Everything before the chosen backend was tried and has a reason; nothing after it was.
    assert list(skipped) == list(AUTO_ORDER[: AUTO_ORDER.index(chosen)])
    assert all(isinstance(r, str) and r for r in skipped.values())
    assert "onnxruntime" in skipped  # a checkpoint has no ONNX file: said, not hidden


def test_named_backend_that_cannot_run_raises(tiny_model_dir: Path) -> None:
    with pytest.raises((BackendUnavailable, ModelFormatError)):
        load_classifier(EngineSettings(backend="onnxruntime"), tiny_model_dir)


def test_unknown_backend_raises(tiny_model_dir: Path) -> None:
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        load_classifier(EngineSettings(backend="tpu"), tiny_model_dir)


def test_null_backend_is_never_chosen_by_auto() -> None:
    assert "null" not in AUTO_ORDER


def test_null_backend_gives_each_text_a_fixed_mixed_label(tiny_model_dir: Path, sample_texts: list[str]) -> None:
    import numpy as np

    clf = load_classifier(EngineSettings(backend="null"), tiny_model_dir)
    texts = [f"{t} #{i}" for i, t in enumerate(sample_texts * 4)][:400]
    out = clf.classify(texts)
    # Same text, different batch neighbours and padding: same answer.
    again = clf.classify(texts[::-1])
    assert np.array_equal(out["sentiment"], again["sentiment"][::-1])
    labels = out["sentiment"].argmax(axis=1)
    # Not all one class (uniform probabilities made every event "negative" by argmax).
    shares = np.bincount(labels, minlength=3) / len(texts)
    assert 0.05 < shares[0] < 0.3 and shares[1] > shares[0] and shares[2] > 0.1
    assert np.allclose(out["sentiment"].sum(axis=1), 1.0)


def test_cuda_is_skipped_without_importing_torch_when_no_nvidia_driver_is_visible(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing torch only to learn there is no GPU cost a CPU worker ~490 MB; the probe comes first."""
    import ctypes
    import glob
    import sys

    import engine.runtime as runtime

    def no_lib(name: str, *a: object, **k: object) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(ctypes, "CDLL", no_lib)
    monkeypatch.delitem(sys.modules, "engine.backends.cuda_backend", raising=False)
    with pytest.raises(BackendUnavailable, match="torch not imported"):
        runtime.create_backend("cuda", tiny_model_dir, EngineSettings())
    assert "engine.backends.cuda_backend" not in sys.modules  # the module that imports torch was never loaded


def test_cuda_probe_leaves_the_decision_to_torch_where_a_device_node_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    import glob

    from engine.runtime import no_nvidia_driver

    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
    assert no_nvidia_driver() is None
