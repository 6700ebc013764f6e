"""Source C's paging is honest when the ranking moves between requests (issue 7, item 7): distinct coins are
counted, duplicates across pages named, what the shift pushed onto pages already fetched is fetched again, what
cannot be found again is a warning, and coins that vanished since the previous pass are reported."""

from __future__ import annotations

import dataclasses
import json

import responses

from common.pipeline import run_extract, run_transform
from common.store import DataQuery
from tests.unit.test_http_sources import C_URL, coin, wiring  # noqa: F401 (fixture)
from tests.unit.test_http_sources import clock  # noqa: F401 (fixture)


class RankedMarket:
    """Source C over `responses`: pages of `ranking`; after the n-th answer, `moves[n]` = (from_rank, to_rank) takes
    the coin at from_rank and puts it at to_rank (None: no move), as market caps move between two requests."""

    def __init__(self, coins: int, moves: list | None = None) -> None:
        self.ranking = [coin(n) for n in range(coins)]
        self.moves, self.asked = list(moves or []), []
        responses.add_callback(responses.GET, C_URL, callback=self)

    def move(self, from_rank: int, to_rank: int) -> None:
        self.ranking.insert(to_rank - 1, self.ranking.pop(from_rank - 1))

    def __call__(self, request):
        page, per_page = int(request.params["page"]), int(request.params["per_page"])
        self.asked.append(page)
        body = self.ranking[(page - 1) * per_page: page * per_page]
        if self.moves and (move := self.moves.pop(0)):
            self.move(*move)
        return 200, {"Content-Type": "application/json"}, json.dumps(body)


def paged(wiring, per_page: int, max_pages: int):
    settings = dataclasses.replace(wiring.settings, source_c_rate="100/1m", source_c_per_page=per_page,
                                   source_c_max_pages=max_pages)
    return dataclasses.replace(wiring, settings=settings)


def stored_ids(wiring) -> set[str]:
    return {row["source_id"] for row in wiring.store.query_normalized(DataQuery(source="source_c", limit=1000)).items}


@responses.activate
def test_a_coin_pushed_onto_a_fetched_page_is_fetched_again_and_counted_honestly(wiring):
    wiring = paged(wiring, per_page=5, max_pages=2)
    market = RankedMarket(12, moves=[(6, 1)])  # after page 1: the 6th coin jumps to the top; the 5th drops to page 2
    run = run_extract("c", wiring)
    run_transform(wiring)
    assert stored_ids(wiring) == {f"coin-{n}" for n in range(10)}, "a coin in the top 10 was never fetched"
    assert market.asked == [1, 2, 1]
    summary = run.summary
    assert (summary["records"], summary["distinct_coins"]) == (15, 10)
    assert summary["duplicates_across_pages"] == [{"id": "coin-4", "pages": [1, 2]}]
    assert summary["refetched_pages"] == [{"page": 1, "after_page": 2, "new_ids": ["coin-5"]}]
    assert summary["shift_unrecovered"] == 0 and run.status == "succeeded"


@responses.activate
def test_the_refetch_walks_back_until_the_shift_is_accounted_for(wiring):
    wiring = paged(wiring, per_page=5, max_pages=3)
    market = RankedMarket(20, moves=[None, (13, 1)])  # after page 2, a page-3 coin jumps to the top
    run = run_extract("c", wiring)
    assert market.asked == [1, 2, 3, 2, 1]
    assert run.summary["distinct_coins"] == 15 and run.summary["shift_unrecovered"] == 0
    assert [r["new_ids"] for r in run.summary["refetched_pages"]] == [[], ["coin-12"]]
    run_transform(wiring)
    assert stored_ids(wiring) == {f"coin-{n}" for n in range(15)}


@responses.activate
def test_a_shift_that_cannot_be_found_again_is_a_warning_not_silence(wiring):
    wiring = paged(wiring, per_page=2, max_pages=2)
    RankedMarket(6, moves=[(6, 1), (1, 6)])  # a coin enters the top, pushes one across, then leaves again
    run = run_extract("c", wiring)
    assert run.summary["distinct_coins"] == 3 and run.summary["shift_unrecovered"] == 1
    assert run.summary["duplicates_across_pages"] == [{"id": "coin-1", "pages": [1, 2]}]
    assert any("ranking moved" in warning and "coin-1" in warning for warning in run.summary["warnings"])


@responses.activate
def test_coins_that_vanished_since_the_previous_pass_are_reported(wiring, clock):
    wiring = paged(wiring, per_page=3, max_pages=2)
    market = RankedMarket(9)
    first = run_extract("c", wiring)
    assert first.summary["vanished_since_last_pass"] == []
    market.move(2, 8)  # coin-1 (page 1 last pass) falls out of the top 6: suspicious
    clock.advance(120)
    second = run_extract("c", wiring)
    assert second.summary["vanished_since_last_pass"] == [{"id": "coin-1", "page": 1}]
    assert any("coin-1" in warning and "vanished" in warning for warning in second.summary["warnings"])
    market.move(6, 9)  # the 6th coin (coin-6, last page) drops just below the cut: ordinary churn at the tail
    clock.advance(120)
    third = run_extract("c", wiring)
    assert third.summary["vanished_since_last_pass"] == [{"id": "coin-6", "page": 2}]
    assert not any("vanished" in warning for warning in third.summary["warnings"])


@responses.activate
def test_a_pass_cut_by_the_deadline_keeps_its_seen_coins_for_the_next_invocation(wiring, clock):
    wiring = paged(wiring, per_page=5, max_pages=2)
    market = RankedMarket(12, moves=[(6, 1)])
    short = dataclasses.replace(wiring, settings=dataclasses.replace(wiring.settings, source_c_rate="1/1m",
                                                                     invocation_budget_s=30))
    first = run_extract("c", short)  # page 1, then the next slot is past the deadline
    assert first.status == "partial" and market.asked == [1]
    clock.advance(61)
    second = run_extract("c", short)
    assert market.asked == [1, 2]  # the refetch of page 1 waits for the next invocation
    assert second.summary["duplicates_across_pages"] == [{"id": "coin-4", "pages": [1, 2]}]
