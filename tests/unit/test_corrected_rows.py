"""A row quarantined for a bad value and then corrected in the CSV loads, and its quarantine entry is resolved by
the run that loaded it (nothing left claiming a row is missing when it is not)."""

from __future__ import annotations

import os

from common.pipeline import run_extract, run_transform
from tests.conftest import csv_lines, write_csv


def test_a_corrected_row_loads_and_resolves_its_quarantine_entry(wiring):
    lines = csv_lines(coins=4, days=300)  # the edit lies past the first 64 KB (which identify the file)
    good = lines[1000]
    cells = good.split(",")
    cells[7] = "x" * len(cells[7])  # Close: same length, unreadable
    lines[1000] = ",".join(cells)
    path = wiring.settings.source_b_path
    write_csv(path, lines)
    run_extract("source_b", wiring), run_transform(wiring)
    [entry] = wiring.store.list_quarantine("source_b", unresolved_only=True)
    assert "Close" in entry["reason"] and wiring.store.count_normalized() == 1199

    lines[1000] = good
    write_csv(path, lines)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    run_extract("source_b", wiring)
    transform = run_transform(wiring)
    assert transform.status == "succeeded" and wiring.store.count_normalized() == 1200
    assert wiring.store.count_quarantine("source_b", unresolved_only=True) == 0
    [resolved] = wiring.store.list_quarantine("source_b")
    assert resolved["resolved_by"] == transform.run_id
