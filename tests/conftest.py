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
