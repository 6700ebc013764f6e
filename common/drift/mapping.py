"""Field mapping per source and run: match incoming names once per shape, read timestamp values in the format
declared, learned or inferred for them, persist what was learned, and collect every decision for the run summary."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Mapping, Sequence

from common.clock import Clock, iso_utc
from common.config import Settings
from common.drift.coerce import CoerceError, parse_with_format, to_timestamp
from common.drift.formats import DateOrder, Undecided
from common.drift.matcher import MatchResult, match_fields
from common.sources import SourceSpec
from common.store import SharedState
from common.store.state import update_state

FUTURE_SLACK = timedelta(days=1)
"""A date up to this far past the run's clock is not "in the future" (zones, clock skew)."""


class FieldMapper:
    """Maps one source's incoming field names for one run; results are cached per distinct set of names."""

    @classmethod
    def for_run(cls, store: SharedState, spec: SourceSpec, settings: Settings, run_id: str, clock: Clock,
                learn: bool = True) -> "FieldMapper":
        return cls(store, spec, run_id, clock, threshold=settings.drift_threshold,
                   extra_aliases=settings.aliases_for(spec.name), learn=learn,
                   formats=ValueFormats(store, spec.name, run_id, clock, settings.formats_for(spec.name), learn=learn))

    def __init__(self, store: SharedState, spec: SourceSpec, run_id: str, clock: Clock, *, threshold: float,
                 extra_aliases: Mapping[str, Sequence[str]] | None = None, learn: bool = True,
                 formats: "ValueFormats | None" = None) -> None:
        self.store, self.spec, self.run_id, self.clock = store, spec, run_id, clock
        self.threshold, self.learn = threshold, learn
        self.extra_aliases = extra_aliases or {}
        self.key = f"mapping:{spec.name}"
        stored, _ = store.get_state(self.key)
        self.learned: dict[str, dict] = (stored or {}).get("fields", {})
        self._cache: dict[tuple, MatchResult] = {}
        self.decisions: dict[str, dict] = {}
        self.formats = formats or ValueFormats(store, spec.name, run_id, clock, {}, learn=learn)

    def map(self, names: Sequence[str], samples: Mapping[str, Sequence[object]] | None = None) -> MatchResult:
        shape = tuple(names)
        result = self._cache.get(shape)
        if result is None:
            wanted = [name for name in names if name not in self.spec.ignored]
            result = match_fields(
                wanted, self.spec.fields, threshold=self.threshold, extra_aliases=self.extra_aliases,
                samples=samples, learned={name: entry["mapped_to"] for name, entry in self.learned.items()},
            )
            self._cache[shape] = result
            self._record(result)
        return result

    def _record(self, result: MatchResult) -> None:
        fresh = {}
        for decision in result.decisions:
            if decision.method == "exact":
                continue
            entry = {"source": self.spec.name, **decision.to_dict()}
            if decision.method == "learned":
                known = self.learned.get(decision.field, {})
                entry.update(method=known.get("method", "learned"), confidence=known.get("confidence", 1.0),
                             learned_in_run=known.get("first_seen_run"))
            elif decision.action == "mapped":
                fresh[decision.field] = {"mapped_to": decision.mapped_to, "confidence": decision.confidence,
                                         "method": decision.method, "first_seen_run": self.run_id,
                                         "first_seen_at": iso_utc(self.clock())}
            self.decisions.setdefault(decision.field, entry)
        if fresh and self.learn:
            self._persist(fresh)

    def _persist(self, fresh: dict[str, dict]) -> None:
        self.learned = persist_learned(self.store, self.key, fresh)

    def all_decisions(self) -> dict[str, dict]:
        """Name decisions and value-format decisions (keyed `format:<field>`), as the run summary lists them."""
        return {**self.decisions, **self.formats.decisions}

    def adopt(self, key: str, decision: dict) -> None:
        """Take over a decision made for this run by a worker process."""
        if key.startswith("format:"):
            self.formats.adopt(key, decision)
        else:
            self.decisions.setdefault(key, decision)

    def warnings(self) -> list[str]:
        return [f"{d['source']}: field {d['field']!r} skipped ({d.get('reason') or 'no match'})"
                for d in self.decisions.values() if d["action"] == "skipped"] + self.formats.warnings()

    def missing_message(self, result: MatchResult) -> str | None:
        """Why the batch cannot load: each missing required field with the closest incoming names."""
        if not result.missing_required:
            return None
        parts = []
        for name in result.missing_required:
            field = self.spec.field(name)
            closest = ", ".join(f"{n} ({score:.2f})" for n, score in result.closest(name)) or "none"
            parts.append(f"{name} ({field.aliases[0] if field.aliases else name}); closest: {closest}")
        return f"{self.spec.name}: missing required field(s): {'; '.join(parts)}"


def persist_learned(store: SharedState, key: str, fresh: dict[str, dict]) -> dict[str, dict]:
    """Add `fresh` entries to the learned fields under `key` (compare-and-set); the first run to learn one keeps
    the credit. Returns every learned field as stored."""

    def add(stored: dict | None) -> dict | None:
        fields = (stored or {}).get("fields", {})
        missing = {name: entry for name, entry in fresh.items() if name not in fields}
        return {"fields": {**fields, **missing}} if missing or stored is None else None

    return (update_state(store, key, add) or {}).get("fields", {})


class ValueFormats:
    """Reads one source's timestamp values for one run: a declared format (`FIELD_FORMATS`) first, then the
    standard forms, then a format learned earlier, else infers the date order from every value seen (see
    `common.drift.formats`). An inferred format is persisted under `formats:<source>` and recorded as a decision."""

    RANK = {"ambiguous": 0, "applied": 1, "inferred": 2}

    def __init__(self, store: SharedState, source: str, run_id: str, clock: Clock, declared: Mapping[str, str], *,
                 learn: bool = True) -> None:
        self.store, self.source, self.run_id, self.clock, self.learn = store, source, run_id, clock, learn
        self.declared = dict(declared)
        self.key = f"formats:{source}"
        self.latest = (datetime.fromtimestamp(clock(), timezone.utc) + FUTURE_SLACK).date()
        self._learned: dict[str, dict] | None = None  # read on first need: most runs never need it
        self.orders: dict[str, DateOrder] = {}
        self._refreshed: dict[str, int] = {}
        self.decisions: dict[str, dict] = {}

    @property
    def learned(self) -> dict[str, dict]:
        if self._learned is None:
            stored, _ = self.store.get_state(self.key)
            self._learned = (stored or {}).get("fields", {})
        return self._learned

    def timestamp(self, field: str, label: str, value: object, *, final: bool = True) -> str:
        """`value` as a fixed-width UTC timestamp. Raises CoerceError with the reason; with `final=False`, raises
        Undecided for a value whose format is still being inferred (call again with `final=True` once every
        value of the batch has been seen)."""
        declared = self.declared.get(field)
        if declared is not None and isinstance(value, str):
            try:
                stamp = parse_with_format(value, declared)
            except CoerceError:
                pass
            else:
                self._note(field, label, "applied", format=declared, method="declared (FIELD_FORMATS)")
                return stamp
        try:
            return to_timestamp(value)
        except CoerceError as refusal:
            if not isinstance(value, str) or not DateOrder.candidates(value):
                if declared is not None:
                    raise CoerceError(f"{refusal}; nor does it match FIELD_FORMATS {declared}") from None
                raise
        if declared is not None:
            raise CoerceError(f"{value.strip()!r} does not match the format {declared} declared in FIELD_FORMATS")
        if field in self.learned:
            return self._with_learned(field, label, value)
        order = self.orders.get(field) or self.orders.setdefault(field, DateOrder(self.latest))
        if not final or order.remaining is None:
            order.observe(value)  # CoerceError: no date in any order
        if not final:
            raise Undecided
        return self._settle(field, label, value, order)

    def _settle(self, field: str, label: str, value: str, order: DateOrder) -> str:
        if order.decided is None and self._refreshed.get(field) != order.seen:
            self._refreshed[field] = order.seen
            self._learned = None  # another process of this run (or another run) may have learned it meanwhile
            if field in self.learned:
                return self._with_learned(field, label, value)
        if order.decided is None:
            self._note(field, label, "ambiguous", format=None, method="inferred from values",
                       evidence=order.evidence(), readings=list(order.remaining or []), held_back=True)
            raise order.refuse(label, value, self.source, field)
        entry = {"format": order.decided, "method": "inferred from values", "evidence": order.evidence(),
                 "first_seen_run": self.run_id, "first_seen_at": iso_utc(self.clock())}
        if self.learn:
            self._learned = persist_learned(self.store, self.key, {field: entry})
        else:
            self.learned[field] = entry
        if self.learned[field].get("first_seen_run") == self.run_id:
            self._note(field, label, "inferred", format=order.decided, method="inferred from values",
                       evidence=order.evidence())
        return self._with_learned(field, label, value)

    def _with_learned(self, field: str, label: str, value: str) -> str:
        known = self.learned[field]
        try:
            stamp = parse_with_format(value, known["format"])
        except CoerceError:
            raise CoerceError(
                f"{value.strip()!r} does not match the format {known['format']} learned in run "
                f"{known.get('first_seen_run')} ({known.get('method')}); to read it otherwise set "
                f"FIELD_FORMATS='{json.dumps({self.source: {field: known['format']}})}' with the right format"
            ) from None
        if known.get("first_seen_run") != self.run_id:
            self._note(field, label, "applied", format=known["format"], method=known.get("method", "learned"),
                       learned_in_run=known.get("first_seen_run"))
        return stamp

    def _note(self, field: str, label: str, action: str, **details) -> None:
        key = f"format:{field}"
        known = self.decisions.get(key)
        if known is not None and (self.RANK[known["action"]] > self.RANK[action]
                                  or known["action"] == action != "ambiguous"):  # ambiguity: keep the latest view
            return
        held = details.pop("held_back", False) or bool(known and known.get("held_back"))
        self.decisions[key] = {"source": self.source, "field": field, "column": label, "format": None,
                               "action": action, **details, "held_back": held}

    def adopt(self, key: str, decision: dict) -> None:
        known = self.decisions.get(key)
        if known is None or self.RANK[decision["action"]] > self.RANK[known["action"]]:
            held = decision.get("held_back") or bool(known and known.get("held_back"))
            self.decisions[key] = {**decision, "held_back": held}
        elif decision.get("held_back"):
            known["held_back"] = True

    def warnings(self) -> list[str]:
        out = []
        for d in self.decisions.values():
            replay = f"run `etl quarantine replay --source {self.source}`"
            if d["action"] == "ambiguous":
                example = json.dumps({self.source: {d["field"]: (d.get("readings") or ["%d-%m-%y %H:%M"])[0]}})
                readings = ", ".join(d.get("readings") or []) or "no single format"
                out.append(f"{self.source}: rows held back in quarantine: the date format of {d['column']} is "
                           f"ambiguous ({readings}); set FIELD_FORMATS='{example}' with the format the file really "
                           f"uses and {replay}")
            elif d["held_back"]:
                out.append(f"{self.source}: {d['column']} format {d['format']} was inferred after rows had been held "
                           f"back in quarantine as ambiguous; {replay} to load them")
        return out
