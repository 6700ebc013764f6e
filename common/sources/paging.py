"""One pass over a source's pages, kept as the extract checkpoint: where the pass is, which coins it saw on which
page, what a moving ranking still owes it, which page keeps failing, and the coins of the previous pass.

Why the coins are tracked: source C pages by market-cap rank, and the ranking moves between two requests. A coin
that falls across a page boundary after the earlier page was read is served twice; for each such duplicate, some
coin rose across a boundary into pages already read and would be missed without a word (page sizes are fixed, so
what goes down one boundary came up another). The rule:

- a duplicate on page N of a coin first seen on another page makes the pass *owe* one coin;
- while coins are owed, the pages before N are fetched again, nearest first (a coin that rose across one boundary
  sits at the bottom of page N-1; one that rose further is on an earlier page), and every coin not seen yet is
  kept; each new coin pays one owed coin back;
- the walk back stops when nothing is owed, after page 1, or after `max_pages` re-fetches in the pass (the budget
  is shared with the pages themselves); what is still owed is counted as `unrecovered` and reported.

Coins that were in the previous complete pass and not in this one are reported when this pass completes; a coin
that vanished from a page before the previous pass's last page is suspicious (the tail churns on its own).
Everything kept is bounded: at most MAX_TRACKED_IDS ids per pass (~1000 with the defaults).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MAX_TRACKED_IDS = 5000
MAX_LISTED = 100  # duplicates and vanished coins listed in a run summary
FAILURES_BEFORE_SKIP = 2  # invocations in a row a page may fail, with no next page to tell, before it is skipped


@dataclass
class PagePass:
    """The state of one pass (a snapshot) of a source; `to_checkpoint()` is what the store keeps after each page."""

    snapshot: str
    started_at: float
    paged: bool = True
    max_pages: int = 1
    next_page: int = 1
    end_reached: bool = False
    ids: dict[str, list[str]] = field(default_factory=dict)  # page -> ids first seen on it (JSON keys are text)
    duplicates: list[dict] = field(default_factory=list)  # {"id", "pages": [first seen, seen again]}, the first ones
    duplicate_count: int = 0
    owed: int = 0
    unrecovered: int = 0
    refetch_page: int | None = None
    refetch_after: int | None = None  # the page whose duplicates started the walk back
    refetches: list[dict] = field(default_factory=list)  # {"page", "after_page", "new_ids"}
    failing: dict | None = None  # {"page", "invocations"}: a page that failed with no next page to judge it by
    skipped: list[dict] = field(default_factory=list)  # {"page", "reason"}
    previous: dict[str, list[str]] | None = None  # ids per page of the last complete pass
    truncated: bool = False  # more than MAX_TRACKED_IDS ids: later ones are not tracked

    # --- lifecycle -------------------------------------------------------------------------------------------------
    @classmethod
    def resume(cls, saved: dict | None, run_id: str, now: float, interval_s: float, *, paged: bool,
               max_pages: int) -> tuple[PagePass, str | None]:
        """The pass to work on: the checkpointed one if it is unfinished and younger than `interval_s`, else a
        fresh one (snapshot = this run's id). Returns a note for the run's warnings when that is worth saying."""
        saved = saved or {}
        fresh = cls(snapshot=run_id, started_at=now, paged=paged, max_pages=max_pages)
        if saved.get("complete", True):  # none yet, or the last one finished: start the next
            fresh.previous = saved.get("ids") if paged and saved.get("ids") else saved.get("previous")
            return fresh, None
        fresh.previous = saved.get("previous")
        started = saved.get("started_at")
        if started is None or now - started > interval_s:
            age = "of unknown age" if started is None else f"started {now - started:.0f}s ago"
            return fresh, (f"pass {saved.get('snapshot')} {age} stopped before page {saved.get('next_page')}; older "
                           f"than the pass interval ({interval_s:g}s, SOURCE_PASS_INTERVAL_S): starting a fresh pass")
        known = {name for name in cls.__dataclass_fields__} - {"paged", "max_pages"}
        resumed = cls(**{k: v for k, v in saved.items() if k in known}, paged=paged, max_pages=max_pages)
        where = f"re-fetching page {resumed.refetch_page}" if resumed.refetch_page else f"at page {resumed.next_page}"
        return resumed, f"resuming snapshot {resumed.snapshot} {where}"

    @property
    def complete(self) -> bool:
        return self.end_reached and self.refetch_page is None

    def next_fetch(self) -> tuple[int, bool]:
        """(page, whether it is a re-fetch for the ranking shift)."""
        return (self.refetch_page, True) if self.refetch_page else (self.next_page, False)

    def is_last(self, page: int) -> bool:
        return not self.paged or page >= self.max_pages

    # --- what came in ----------------------------------------------------------------------------------------------
    def seen(self) -> dict[str, int]:
        return {coin: int(page) for page, coins in self.ids.items() for coin in coins}

    def record_page(self, page: int, ids: list[str], short: bool) -> list[dict]:
        """A page as served; returns the duplicates it brought (and starts a walk back if coins are owed)."""
        seen, found, new_duplicates = self.seen(), {}, []
        for coin in ids:
            if coin in seen or coin in found:
                new_duplicates.append({"id": coin, "pages": [seen.get(coin, page), page]})
            else:
                found[coin] = page
        found = list(found)
        self._keep(page, found)
        self.duplicates.extend(new_duplicates[:MAX_LISTED - len(self.duplicates)])
        self.duplicate_count += len(new_duplicates)
        self.owed += sum(1 for duplicate in new_duplicates if duplicate["pages"][0] != page)
        self.next_page, self.failing = page + 1, None
        self.end_reached = self.is_last(page) or short
        if self.owed and page > 1:
            self.refetch_page, self.refetch_after = page - 1, page
        else:
            self._end_walk()
        return new_duplicates

    def record_refetch(self, page: int, ids: list[str]) -> list[str]:
        """A page fetched again during a walk back; returns the coins it brought that the pass had not seen."""
        seen = self.seen()
        new = [coin for coin in dict.fromkeys(ids) if coin not in seen]
        self._keep(page, new)
        self.refetches.append({"page": page, "after_page": self.refetch_after, "new_ids": new})
        self.owed = max(0, self.owed - len(new))
        if self.owed and page > 1 and len(self.refetches) < self.max_pages:
            self.refetch_page = page - 1
        else:
            self._end_walk()
        return new

    def abandon_walk(self) -> None:
        """A re-fetch failed: what is owed stays unrecovered; the pass goes on."""
        self._end_walk()

    def _end_walk(self) -> None:
        self.unrecovered += self.owed
        self.owed, self.refetch_page, self.refetch_after = 0, None, None

    def _keep(self, page: int, coins: list[str]) -> None:
        if not self.paged:  # one response per pass: counted here, never checkpointed (see to_checkpoint)
            self.ids.setdefault(str(page), []).extend(coins)
            return
        room = MAX_TRACKED_IDS - sum(len(coins) for coins in self.ids.values())
        self.truncated = self.truncated or len(coins) > room
        self.ids.setdefault(str(page), []).extend(coins[:max(0, room)])

    # --- failures ----------------------------------------------------------------------------------------------
    def note_failure(self, page: int) -> int:
        """A page failed with nothing to tell whether the page or the source is at fault; returns in how many
        invocations in a row it has failed."""
        same = self.failing is not None and self.failing["page"] == page
        self.failing = {"page": page, "invocations": self.failing["invocations"] + 1 if same else 1}
        return self.failing["invocations"]

    def skip(self, page: int, reason: str) -> None:
        self.skipped.append({"page": page, "reason": reason})
        self.next_page, self.failing = page + 1, None
        self.end_reached = self.is_last(page)

    # --- reporting ---------------------------------------------------------------------------------------------
    def vanished(self) -> list[dict]:
        """Coins of the previous complete pass that this one did not see, with the page they were on."""
        seen = self.seen()
        return [{"id": coin, "page": int(page)} for page, coins in sorted((self.previous or {}).items(),
                                                                          key=lambda item: int(item[0]))
                for coin in coins if coin not in seen]

    def previous_last_page(self) -> int:
        return max((int(page) for page in self.previous or {}), default=0)

    def to_checkpoint(self) -> dict:
        state = {k: v for k, v in asdict(self).items() if k not in ("paged", "max_pages")}
        if not self.paged:
            state["ids"] = {}
        return {**state, "complete": self.complete}

    def ledger_view(self) -> dict:
        """The checkpoint without the id lists, for the run ledger."""
        return {"snapshot": self.snapshot, "started_at": self.started_at, "next_page": self.next_page,
                "complete": self.complete, "refetch_page": self.refetch_page, "failing": self.failing}
