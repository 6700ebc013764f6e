"""A JSON batch that cannot be read at all stays quarantined through a replay until it really loads."""

from __future__ import annotations

from common.pipeline import run_replay, run_transform
from common.store import RawBatch


def test_an_unreadable_json_batch_fails_the_transform_and_a_replay_does_not_resolve_it(wiring):
    wiring.store.put_raw_batch(RawBatch(batch_id="source_c:s:1", source="source_c", run_id="x", format="json",
                                        payload='[{"id": "cut', row_count=0))
    transform = run_transform(wiring)
    assert transform.status == "failed" and "not valid JSON" in transform.summary["errors"][0]
    [entry] = wiring.store.list_quarantine("source_c", unresolved_only=True)
    assert entry["raw"] == '[{"id": "cut'
    replay = run_replay(wiring, "c")
    assert replay.rows_out == 0
    assert wiring.store.count_quarantine("source_c", unresolved_only=True) == 1, "resolved with nothing loaded"
