"""Read-modify-write of a small shared-state document (`Store.get_state` / `cas_state`), retried on contention:
the one compare-and-set loop that learned mappings, adaptive rates and incident state share."""

from __future__ import annotations

import copy
from typing import Callable

from common.errors import StoreError
from common.store import SharedState

ATTEMPTS = 50


def update_state(store: SharedState, key: str, change: Callable[[dict | None], dict | None],
                 attempts: int = ATTEMPTS) -> dict | None:
    """Apply `change` to the document under `key` atomically. `change` gets a copy of what is stored (None when
    absent) and returns the new document, or None to leave it as it is; it may run several times under contention,
    so it must not have side effects. Returns the document as stored afterwards."""
    for _ in range(attempts):
        stored, version = store.get_state(key)
        new = change(copy.deepcopy(stored))
        if new is None:
            return stored
        if store.cas_state(key, new, version):
            return new
    raise StoreError(f"shared state {key}: too much contention ({attempts} compare-and-set attempts)")
