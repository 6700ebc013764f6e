"""Answers kept against the store's data version: records change only when a transform commits, and every commit
bumps the version in the same write, so anything computed from records stays right until the version moves."""

from __future__ import annotations

import threading


class VersionedCache:
    """Values per key, valid while the store's data version is the one they were computed at; bounded in entries
    and bytes (full: everything is dropped, cheaper to keep right than an LRU and refilled by the next requests)."""

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._version: int | None = None
        self._values: dict = {}
        self._bytes = 0

    def get(self, version: int, key):
        with self._lock:
            return self._values.get(key) if version == self._version else None

    def put(self, version: int, key, value, size: int = 0) -> None:
        with self._lock:
            if version != self._version:
                if self._version is not None and version < self._version:
                    return  # computed by a request that started before a newer commit was seen: stale
                self._version, self._values, self._bytes = version, {}, 0
            full = len(self._values) >= self.max_entries or (
                self.max_bytes is not None and self._bytes + size > self.max_bytes)
            if full:
                self._values, self._bytes = {}, 0
            if self.max_bytes is None or size <= self.max_bytes:
                self._values[key] = value
                self._bytes += size
