"""A store bound to one run's lease: every durable write carries the run's fence, reads pass straight through.

Stage code keeps calling the store as before; what a run that lost its lease writes is refused (LeaseLost).
"""

from __future__ import annotations

from common.store import Fence, Store

FENCED_WRITES = frozenset({"put_checkpoint", "put_raw_batch", "commit_transformed", "resolve_quarantine", "save_run",
                           "cas_state", "begin_bulk_load", "finish_bulk_load", "prune_raw_batches", "prune_runs",
                           "prune_quarantine"})


class FencedStore:
    """Duck-typed `Store` view: the fenced writes get `fence=`, everything else is the wrapped store's."""

    def __init__(self, store: Store, fence: Fence) -> None:
        self._store, self.fence = store, fence

    def __getattr__(self, name: str):
        attribute = getattr(self._store, name)
        if name not in FENCED_WRITES:
            return attribute

        def fenced(*args, **kwargs):
            return attribute(*args, fence=self.fence, **kwargs)

        return fenced
