"""Typed defaults for ``finpulse build-engine`` (env prefix ``FINPULSE_BUILD_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.settings import DEFAULT_MAX_SEQ_LEN
from finpulse.paths import default_data_dir


def _default_timing_cache() -> Path:
    return Path.home() / ".cache" / "finpulse" / "tensorrt-timing.cache"


class BuildSettings(BaseSettings):
    """Defaults for engine builds; every one can also be given on the command line."""

    model_config = SettingsConfigDict(
        env_prefix="FINPULSE_BUILD_", extra="ignore", protected_namespaces=(), populate_by_name=True
    )

    exporter: str = Field(
        default="torchscript",
        description="ONNX exporter: 'torchscript' (its BERT graph gets ONNX Runtime's attention fusion) or 'dynamo' "
        "(torch.export based).",
    )
    fuse: bool = Field(
        default=True,
        description="Apply ONNX Runtime's transformer fusions to the served ONNX file (validated like the export).",
    )
    opset: int = Field(default=18, ge=14, description="ONNX opset for the export.")
    max_seq_len: int = Field(
        default=DEFAULT_MAX_SEQ_LEN,
        ge=8,
        le=512,
        description="Longest sequence (tokens) the bundle is validated and built for.",
    )
    # The data folder is one fact for every command: FINPULSE_DATA_DIR, as the worker and replay read it.
    data_dir: Path | None = Field(
        default_factory=default_data_dir,
        validation_alias=AliasChoices("FINPULSE_BUILD_DATA_DIR", "FINPULSE_DATA_DIR"),
        description="Folder holding the shared data sets (real validation texts come from it).",
    )
    tolerance: float = Field(
        default=1e-4, ge=0.0, description="Max abs logit diff allowed between ONNX Runtime fp32 and PyTorch."
    )
    int8_min_agreement: float = Field(
        default=0.99, ge=0.0, le=1.0, description="Min argmax agreement per head for INT8."
    )
    int8_method: Literal["blockwise", "dynamic"] = Field(
        default="blockwise",
        description="INT8 method: blockwise (MatMulNBits, 8-bit weights and activations per block) or dynamic "
        "(one activation scale per tensor; faster, loses labels).",
    )
    int8_block_size: int = Field(default=128, ge=16, description="Input channels per quantization block (blockwise).")
    validation_texts: int = Field(
        default=1000,
        ge=1,
        description="How many real texts validation runs on (drawn from both validation files: INT8 agreement is "
        "judged per head on them).",
    )
    max_batch: int = Field(default=256, ge=1, description="Largest batch a TensorRT profile accepts.")
    opt_batch: int = Field(default=64, ge=1, description="Batch size TensorRT tunes kernels for in each profile.")
    seq_buckets: tuple[int, ...] = Field(
        default=(16, 32, 64, 128), description="Sequence-length buckets (one TensorRT profile each)."
    )
    fp16: bool = True
    workspace_mib: int = Field(default=2048, ge=64, description="TensorRT builder workspace.")
    timing_cache: Path = Field(
        default_factory=_default_timing_cache, description="TensorRT timing cache, reused across builds."
    )
    calibration_batch: int = Field(default=32, ge=1, description="Batch size of TensorRT INT8 calibration batches.")
