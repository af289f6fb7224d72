"""``python -m build_engine CHECKPOINT_DIR --out BUNDLE_DIR ...`` (same as ``finpulse build-engine``)."""

from build_engine.cli import build_engine_cmd

if __name__ == "__main__":
    build_engine_cmd()
