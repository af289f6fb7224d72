"""Typed settings for the inference engine (env prefix ``FINPULSE_ENGINE_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Longest sequence in tokens, the one default for the engine, engine builds, training and benchmarks.
DEFAULT_MAX_SEQ_LEN = 128


class EngineSettings(BaseSettings):
    """Which model and backend to run, and how to batch."""

    model_config = SettingsConfigDict(env_prefix="FINPULSE_ENGINE_", extra="ignore", protected_namespaces=())

    model_dir: Path | None = Field(default=None, description="HF checkpoint or engine bundle directory.")
    backend: str = Field(
        default="auto",
        description="auto|torch|onnxruntime|onnxruntime-int8|cuda|tensorrt|null. 'auto' picks tensorrt, then "
        "cuda, then onnxruntime, then torch, and logs every step it skips.",
    )
    max_batch_size: int = Field(default=64, ge=1)
    # Measured on 2 CPU cores (BENCHMARKS.md): ~1k padded tokens per call beats 8k by 1.7x (cache-sized activations).
    max_tokens_per_batch: int = Field(
        default=1024, ge=16, description="Padded tokens (batch x length) per backend call."
    )
    max_seq_len: int = Field(
        default=DEFAULT_MAX_SEQ_LEN, ge=8, le=512, description="Texts are truncated to this many tokens."
    )
    pad_multiple: int = Field(default=16, ge=1, description="Pad each batch to its longest member rounded up to this.")
    num_threads: int | None = Field(default=None, description="CPU threads for torch/onnxruntime; default: all cores.")
    # Measured in the worker (BENCHMARKS.md): spinning off gave 104.5 events/s against 100.9 with it on.
    ort_allow_spinning: bool = Field(
        default=False,
        description="Let ONNX Runtime's pool threads spin between ops (about 7% faster for the engine alone; starves "
        "the worker's event loop).",
    )
    device_id: int = 0
