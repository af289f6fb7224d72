"""Test brokers (fault suite, secured broker) share the jars that bootstrap resolved once with Maven."""

from __future__ import annotations

import shutil

from stream.local import LocalKafka
from stream.settings import get_settings


def link_main_jars(kafka: LocalKafka) -> None:
    """Point ``kafka``'s ``libs`` folder at the main local classpath (a no-op when it already does)."""
    main = LocalKafka(get_settings())
    main.ensure_installed()  # a no-op after `make bootstrap`
    libs = kafka.libs_dir
    libs.parent.mkdir(parents=True, exist_ok=True)
    if libs.is_symlink() and libs.resolve() == main.libs_dir.resolve():
        return
    if libs.is_symlink() or libs.is_file():
        libs.unlink()
    elif libs.exists():
        shutil.rmtree(libs)
    libs.symlink_to(main.libs_dir.resolve(), target_is_directory=True)
