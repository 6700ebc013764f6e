"""The one place that picks adapters from settings; built lazily, once per process and settings."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

from common.clock import Clock, system_clock
from common.config import Settings
from common.store import Store


@dataclass(frozen=True)
class Wiring:
    settings: Settings
    store: Store
    clock: Clock = system_clock
    sleep: Callable[[float], None] = time.sleep


def build_store(settings: Settings, clock: Clock = system_clock) -> Store:
    if settings.mongodb_uri:
        from common.store.mongo import MongoStore

        return MongoStore.from_uri(settings.mongodb_uri, clock=clock, timeout_s=settings.store_timeout_s)
    from common.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path, clock=clock)


@functools.lru_cache(maxsize=8)
def wiring_for(settings: Settings) -> Wiring:
    """The wiring for `settings`, built once per process."""
    return Wiring(settings=settings, store=build_store(settings))


def get_wiring() -> Wiring:
    """Wiring for the current environment (stores connect lazily, so this is safe before a fork)."""
    from common.logs import configure_logging, secret_values

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, secrets=secret_values(settings))
    return wiring_for(settings)
