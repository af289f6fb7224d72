"""Local Kafka and Redis together, for the CLI and test fixtures::

services = LocalServices()
started = services.start()            # {"kafka": True, "redis": False}
...
services.stop([n for n, s in started.items() if s])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stream.local.kafka import LocalKafka
from stream.local.process import LocalService
from stream.local.redis import LocalRedis
from stream.settings import StreamSettings, get_settings


class LocalServices:
    """Kafka and Redis together, for the CLI and test fixtures."""

    def __init__(self, settings: StreamSettings | None = None) -> None:
        self.settings = settings or get_settings()
        self.kafka = LocalKafka(self.settings)
        self.redis = LocalRedis(self.settings)

    @property
    def services(self) -> dict[str, LocalService]:
        """The services by name (``"kafka"``, ``"redis"``)."""
        return {"kafka": self.kafka, "redis": self.redis}

    def _pick(self, names: Iterable[str] | None) -> list[LocalService]:
        if names is None:
            return list(self.services.values())
        unknown = set(names) - set(self.services)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        return [self.services[n] for n in names]

    def ensure_installed(self) -> None:
        """Install what each service needs (idempotent)."""
        for svc in self.services.values():
            svc.ensure_installed()

    def start(self, names: Iterable[str] | None = None, *, wait: bool = True, timeout: float = 90.0) -> dict[str, bool]:
        """Start the named services (default both); returns ``{name: started_by_this_call}``.

        If one fails, those this call started are stopped again before the error propagates.
        """
        started: dict[str, bool] = {}
        try:
            for svc in self._pick(names):
                started[svc.name] = svc.start(wait=wait, timeout=timeout)
        except BaseException:
            # Do not leave half the stack running behind a failed start.
            self.stop([n for n, s in started.items() if s])
            raise
        return started

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until both answer (raises :class:`ServiceError` otherwise)."""
        for svc in self.services.values():
            svc.wait_ready(timeout)

    def is_running(self) -> dict[str, bool]:
        """``{name: running}`` for both."""
        return {name: svc.is_running() for name, svc in self.services.items()}

    def stop(self, names: Iterable[str] | None = None, timeout: float = 30.0) -> dict[str, bool]:
        """Stop the named services we started (default both); ``{name: stopped}``."""
        return {svc.name: svc.stop(timeout) for svc in self._pick(names)}

    def status(self) -> dict[str, dict[str, Any]]:
        """``{name: status dict}`` for both."""
        return {name: svc.status() for name, svc in self.services.items()}
