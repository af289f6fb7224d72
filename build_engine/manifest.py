"""Writing ``manifest.json`` for an engine bundle (schema: ``engine.bundle.Manifest``)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.bundle import MANIFEST, FileEntry, HeadManifest, Manifest, sha256_file
from engine.heads import HeadSpec

# Distribution names to report; TensorRT ships under several names depending on the CUDA flavour.
_VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime", "transformers", "tokenizers")
_TENSORRT_DISTS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12_bindings")


def checkpoint_sha256(path: str | Path) -> str:
    """One sha256 over a checkpoint directory: every file's relative path and contents, in sorted order."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        h.update(rel.encode())
        h.update(b"\0")
        h.update(sha256_file(f).encode())
        h.update(b"\n")
    return h.hexdigest()


def collect_versions() -> dict[str, str]:
    """Versions of the libraries that made (and must run) the bundle; read from metadata, nothing imported."""
    out = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    for dist in _TENSORRT_DISTS:
        try:
            out["tensorrt"] = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return out


def file_entry(bundle_dir: Path, path: Path, precision: str) -> FileEntry:
    return FileEntry(path=path.relative_to(bundle_dir).as_posix(), sha256=sha256_file(path), precision=precision)


def write_manifest(
    bundle_dir: str | Path,
    *,
    model_id: str,
    heads: Sequence[HeadSpec],
    output_names: Mapping[str, str],
    max_seq_len: int,
    files: Mapping[str, tuple[Path, str]],
    source_sha256: str,
    validation: Mapping[str, Any],
    tensorrt_profiles: Sequence[Mapping[str, Any]] = (),
    versions: Mapping[str, str] | None = None,
    tokenizer_file: str = "tokenizer.json",
    checkpoint_dir: str = "checkpoint",
) -> Manifest:
    """Build, check (pydantic) and write ``manifest.json``.

    ``files`` maps ``onnx``/``onnx_int8``/``tensorrt`` to (path, precision).
    """
    root = Path(bundle_dir)
    unknown = set(files) - {"onnx", "onnx_int8", "tensorrt"}
    if unknown:
        raise ValueError(f"unknown bundle file kinds {sorted(unknown)}")
    entries = {kind: file_entry(root, path, precision) for kind, (path, precision) in files.items()}
    # Validated from a dict: the file entries are keyword fields named at run time.
    manifest = Manifest.model_validate(
        dict(
            model_id=model_id,
            heads=[
                HeadManifest(
                    name=h.name,
                    labels=list(h.labels),
                    output=output_names[h.name],
                    pooling=h.pooling,
                    temperature=h.temperature,
                )
                for h in heads
            ],
            max_seq_len=max_seq_len,
            tokenizer_file=tokenizer_file,
            checkpoint_dir=checkpoint_dir,
            tensorrt_profiles=[dict(p) for p in tensorrt_profiles],
            source_sha256=source_sha256,
            versions=dict(versions if versions is not None else collect_versions()),
            validation=json.loads(json.dumps(dict(validation))),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            **entries,
        )
    )
    target = root / MANIFEST
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2))
    os.replace(tmp, target)
    return manifest
