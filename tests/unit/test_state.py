"""update_state: the one compare-and-set loop for shared-state documents."""

from __future__ import annotations

import pytest

from common.errors import StoreError
from common.store.sqlite import SqliteStore
from common.store.state import update_state


@pytest.fixture
def store(tmp_path):
    return SqliteStore(str(tmp_path / "s.sqlite3"))


def test_it_creates_changes_and_leaves_alone(store):
    assert update_state(store, "k", lambda doc: {"n": 1}) == {"n": 1}
    assert update_state(store, "k", lambda doc: {"n": doc["n"] + 1}) == {"n": 2}
    assert update_state(store, "k", lambda doc: None) == {"n": 2}
    assert store.get_state("k") == ({"n": 2}, 2)


class Racing(SqliteStore):
    """Another process writes between every read and our compare-and-set, `races` times."""

    def __init__(self, path, races):
        super().__init__(path)
        self.races = races

    def cas_state(self, key, value, expected_version, fence=None):
        if self.races:
            self.races -= 1
            stored, version = self.get_state(key)
            super().cas_state(key, {"n": (stored or {"n": 0})["n"] + 100}, version)
        return super().cas_state(key, value, expected_version, fence)


def test_a_lost_race_is_retried_on_the_new_value_and_nothing_is_lost(tmp_path):
    store = Racing(str(tmp_path / "r.sqlite3"), races=3)
    assert update_state(store, "k", lambda doc: {"n": (doc or {"n": 0})["n"] + 1}) == {"n": 301}


def test_endless_contention_is_a_store_error(tmp_path):
    store = Racing(str(tmp_path / "r.sqlite3"), races=10**6)
    with pytest.raises(StoreError, match="contention"):
        update_state(store, "k", lambda doc: {"n": 1}, attempts=5)
