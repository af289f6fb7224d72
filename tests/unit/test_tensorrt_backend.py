"""TensorRT build + backend; runs only where tensorrt imports and a CUDA GPU is visible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

trt = pytest.importorskip("tensorrt")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible", allow_module_level=True)

from build_engine.builder import BuildOptions, build_bundle  # noqa: E402
from engine.bundle import EngineBundle  # noqa: E402
from engine.runtime import create_backend, load_classifier  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402
from engine.tokenize import EncodedBatch  # noqa: E402


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_texts: list[str]) -> Path:
    out = tmp_path_factory.mktemp("trt") / "bundle"
    cache = tmp_path_factory.mktemp("trt-cache") / "timing.cache"
    opts = BuildOptions(
        tensorrt=True,
        max_batch=32,
        opt_batch=8,
        seq_buckets=(16, 32, 64),
        max_seq_len=64,
        int8_min_agreement=0.9,
        timing_cache=cache,
        validation_texts=64,
    )
    build_bundle(tiny_model_dir, out, opts, validation_texts=sample_texts)
    assert cache.is_file()  # saved after the build, reused by the next one
    return out


def _settings(**kw: object) -> EngineSettings:
    return EngineSettings(max_batch_size=32, max_seq_len=64, **kw)  # type: ignore[arg-type]


def test_manifest_lists_engine_and_profiles(trt_bundle: Path) -> None:
    mf = EngineBundle.load(trt_bundle).manifest
    assert mf.tensorrt is not None and mf.tensorrt.precision == "fp16"
    assert [p["max"][1] for p in mf.tensorrt_profiles] == [16, 32, 64]
    assert mf.versions["tensorrt"]
    assert mf.validation["tensorrt"]["criterion"] == "argmax_agreement"


def test_tensorrt_matches_torch(trt_bundle: Path, sample_texts: list[str]) -> None:
    texts = sample_texts[:100]
    got = load_classifier(_settings(backend="tensorrt"), trt_bundle).classify(texts)
    ref = load_classifier(_settings(backend="torch"), trt_bundle).classify(texts)
    for head in got:
        assert float(np.abs(got[head] - ref[head]).max()) < 2e-2  # fp16
        assert float((got[head].argmax(1) == ref[head].argmax(1)).mean()) >= 0.9


def test_profile_selection(trt_bundle: Path) -> None:
    backend = create_backend("tensorrt", trt_bundle, _settings())
    assert backend.select_profile(1, 16) == 0  # type: ignore[attr-defined]
    assert backend.select_profile(32, 17) == 1  # type: ignore[attr-defined]
    assert backend.select_profile(5, 64) == 2  # type: ignore[attr-defined]
    for seq in (16, 48, 64):
        ids = np.ones((3, seq), dtype=np.int64)
        out = backend.infer(EncodedBatch(ids, np.ones_like(ids)))
        assert out["sentiment"].shape == (3, 3)
    assert backend.describe()["active_profile"] == 2
    backend.close()


def test_cuda_backend_runs_fp16(trt_bundle: Path, sample_texts: list[str]) -> None:
    clf = load_classifier(_settings(backend="cuda"), trt_bundle)
    assert clf.backend.precision == "fp16" and clf.backend.device.startswith("cuda:")
    probs = clf.classify(sample_texts[:20])
    assert probs["topic"].shape == (20, 20)
