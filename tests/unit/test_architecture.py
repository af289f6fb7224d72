"""The layout holds: import direction (import-linter contracts in pyproject.toml) and a worker without torch."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from finpulse.extras import EXTRA_FOR_MODULE
from finpulse.paths import PROJECT_ROOT

PYPROJECT = PROJECT_ROOT / "pyproject.toml"
HEAVY = ("torch", "transformers", "onnx", "onnxscript", "tensorrt", "safetensors")


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.skip("import-linter is not installed (the [test] extra)")
    proc = subprocess.run(
        [str(lint_imports), "--config", str(PYPROJECT), "--no-cache"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout


@pytest.mark.parametrize(
    "modules",
    [
        "stream.app, stream.worker, stream.processor, engine.runtime, engine.backends.onnxruntime_backend",
        "stream.cli.main",
    ],
)
def test_worker_and_cli_import_no_training_packages(modules: str) -> None:
    """A worker-only install has no torch: the worker, the ONNX Runtime backend and the CLI must not need it."""
    code = f"import sys, {modules}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_extras_table_matches_pyproject() -> None:
    """Every package that a "missing package" message sends to an extra is really in that extra."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        out: set[str] = set()
        for req in extras[extra]:
            if req.startswith("finpulse["):  # an extra that includes others
                for inner in req[len("finpulse[") : -1].split(","):
                    out |= names(inner)
            else:
                out.add(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower())
        return out

    for module, extra in EXTRA_FOR_MODULE.items():
        dist = {"tensorrt": "tensorrt-cu12"}.get(module, module)
        assert dist in names(extra), f"{module} is not in the [{extra}] extra"


def _locked(lock: str) -> set[str]:
    text = (PROJECT_ROOT / "requirements" / lock).read_text()
    return {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", text, re.MULTILINE)}


def test_lock_files_cover_pyproject() -> None:
    """The locks bootstrap and the worker image install from are not stale (scripts/lock.sh rewrites them)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]

    def name(req: str) -> str:
        return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")

    base = {name(r) for r in project["dependencies"]}
    extras = {name(r) for extra, reqs in project["optional-dependencies"].items() if extra != "gpu" for r in reqs} - {
        "finpulse"
    }
    assert base <= _locked("worker.lock")
    assert base | extras <= _locked("dev.lock")
    # The worker image stays free of the training stack.
    assert not {"torch", "transformers", "onnx"} & _locked("worker.lock")
