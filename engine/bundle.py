"""Reading engine bundles: a directory with ``manifest.json``, ONNX/TensorRT files, tokenizer and checkpoint.

``build_engine`` writes bundles; the engine only reads them, so ``engine`` never imports ``build_engine``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from engine.errors import ModelFormatError
from engine.heads import HeadSpec

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1


class HeadManifest(BaseModel):
    name: str
    labels: list[str]
    output: str = Field(description="ONNX/TensorRT output tensor name holding this head's logits")
    pooling: str = "mean"
    temperature: float = Field(default=1.0, gt=0, description="logits are divided by this before the softmax")

    def spec(self) -> HeadSpec:
        return HeadSpec(name=self.name, labels=tuple(self.labels), pooling=self.pooling, temperature=self.temperature)


class FileEntry(BaseModel):
    path: str
    sha256: str
    precision: str = "fp32"


class Manifest(BaseModel):
    """What a bundle holds and how it was made and checked."""

    format: int = BUNDLE_FORMAT
    model_id: str
    heads: list[HeadManifest]
    inputs: list[str] = ["input_ids", "attention_mask"]
    max_seq_len: int
    tokenizer_file: str = "tokenizer.json"
    checkpoint_dir: str = "checkpoint"
    onnx: FileEntry | None = None
    onnx_int8: FileEntry | None = None
    tensorrt: FileEntry | None = None
    tensorrt_profiles: list[dict[str, Any]] = []
    source_sha256: str = ""
    versions: dict[str, str] = {}
    validation: dict[str, Any] = {}
    created_at: str = ""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class EngineBundle:
    """A loaded manifest plus resolved file paths; verifies hashes of the files it hands out."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | Path) -> EngineBundle:
        root = Path(path)
        mf = root / MANIFEST
        if not mf.is_file():
            raise ModelFormatError(
                root, "no manifest.json: not an engine bundle (build one with `finpulse build-engine`)"
            )
        try:
            manifest = Manifest.model_validate(json.loads(mf.read_text()))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ModelFormatError(mf, f"invalid manifest ({exc})") from exc
        if manifest.format != BUNDLE_FORMAT:
            raise ModelFormatError(mf, f"bundle format {manifest.format} not supported (expected {BUNDLE_FORMAT})")
        return cls(root, manifest)

    @property
    def heads(self) -> tuple[HeadSpec, ...]:
        return tuple(h.spec() for h in self.manifest.heads)

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest.tokenizer_file

    @property
    def checkpoint_path(self) -> Path:
        return self.root / self.manifest.checkpoint_dir

    def file(self, kind: str, verify: bool = True) -> Path:
        """Path of the ``onnx``/``onnx_int8``/``tensorrt`` file, checked against its recorded hash."""
        entry: FileEntry | None = getattr(self.manifest, kind)
        if entry is None:
            raise ModelFormatError(self.root, f"bundle has no {kind} file")
        p = self.root / entry.path
        if not p.is_file():
            raise ModelFormatError(p, f"{kind} file listed in manifest is missing")
        if verify:
            actual = sha256_file(p)
            if actual != entry.sha256:
                raise ModelFormatError(
                    p, f"{kind} file is corrupted or was replaced: sha256 {actual[:12]} != manifest {entry.sha256[:12]}"
                )
        return p
