"""Where the project is and where its shared data folder is by default.

One definition for every package; each package's settings use these as defaults, and the
environment (``FINPULSE_LOCAL_DIR``, ``FINPULSE_DATA_DIR``, ...) overrides them.
"""

from __future__ import annotations

from pathlib import Path

#: The repository checkout (the folder holding ``pyproject.toml``).
PROJECT_ROOT: Path = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path | None:
    """``<project>/../shared/data`` where that folder exists, else ``None`` (the user must say where)."""
    candidate = PROJECT_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
