"""Shared fixtures: a real SQLite store in a temp dir and helpers to write Kaggle-style CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import Settings
from common.wiring import Wiring, build_store
from local.generate_csv import HEADER, coin_rows

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SleepingClock(FakeClock):
    """A FakeClock whose `sleep` advances it and remembers every wait (nothing really waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


def store_for(kind: str, settings: Settings):
    """A fresh store of `kind`: "sqlite" (the file in `settings`) or "mongomock" (MongoStore on mongomock-ng)."""
    if kind == "sqlite":
        return build_store(settings)
    import mongomock_ng

    from common.store.mongo import MongoStore

    return MongoStore(mongomock_ng.MongoClient(), "etl_test")


def csv_lines(coins: int = 3, days: int = 50, seed: int = 1, first_coin: int = 0) -> list[str]:
    """Valid data lines (with SNo) for `coins` coins x `days` days, deterministic."""
    import random

    rng = random.Random(seed)
    lines = []
    for index in range(first_coin, first_coin + coins):
        for serial, line in enumerate(coin_rows(index, days, rng), start=1):
            lines.append(f"{serial},{line}")
    return lines


def write_csv(path: Path, lines: list[str], header: str = HEADER.rstrip("\n"), mode: str = "w") -> Path:
    with open(path, mode, encoding="utf-8", newline="") as handle:
        if mode == "w":
            handle.write(header + "\n")
        handle.write("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        sqlite_path=str(tmp_path / "etl.sqlite3"), source_b_path=str(tmp_path / "Historical_Data.csv"),
        csv_chunk_rows=40, lease_ttl_s=30,
    )


@pytest.fixture
def wiring(settings: Settings) -> Wiring:
    store = build_store(settings)
    yield Wiring(settings=settings, store=store)
    store.close()


@pytest.fixture
def store(settings):
    """A real SQLite store on the test's own file (the `settings` fixture's)."""
    store = build_store(settings)
    yield store
    store.close()


@pytest.fixture
def sent_to_worker(monkeypatch) -> list[str]:
    """The ids of the batches the transform hands to its normalize worker, in order (the worker is real)."""
    from common import parallel

    sent: list[str] = []
    submit = parallel.Worker.submit
    monkeypatch.setattr(parallel.Worker, "submit", lambda worker, fn, settings, batch, *rest: sent.append(
        batch.batch_id) or submit(worker, fn, settings, batch, *rest))
    return sent
