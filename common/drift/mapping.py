"""Field mapping per source and run: match incoming names once per shape, persist what was learned, and
collect every decision for the run summary."""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from common.clock import Clock, iso_utc
from common.config import Settings
from common.drift.matcher import MatchResult, match_fields
from common.errors import ConfigError, StoreError
from common.sources import SourceSpec
from common.store import Store

CAS_ATTEMPTS = 20


def parse_field_aliases(text: str) -> dict[str, dict[str, list[str]]]:
    """`FIELD_ALIASES` JSON: {"source_b": {"price_usd": ["Closing Price"]}} (validated at start-up)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"FIELD_ALIASES must be JSON such as {{\"source_b\": {{\"price_usd\": [\"Closing\"]}}}}: {exc}"
                          ) from None
    if not isinstance(value, dict) or not all(
        isinstance(fields, dict) and all(isinstance(names, list) and all(isinstance(n, str) for n in names)
                                         for names in fields.values())
        for fields in value.values()
    ):
        raise ConfigError("FIELD_ALIASES must map source -> canonical field -> list of names")
    return value


class FieldMapper:
    """Maps one source's incoming field names for one run; results are cached per distinct set of names."""

    @classmethod
    def for_run(cls, store: Store, spec: SourceSpec, settings: Settings, run_id: str, clock: Clock,
                learn: bool = True) -> "FieldMapper":
        return cls(store, spec, run_id, clock, threshold=settings.drift_threshold,
                   extra_aliases=settings.aliases_for(spec.name), learn=learn)

    def __init__(self, store: Store, spec: SourceSpec, run_id: str, clock: Clock, *, threshold: float,
                 extra_aliases: Mapping[str, Sequence[str]] | None = None, learn: bool = True) -> None:
        self.store, self.spec, self.run_id, self.clock = store, spec, run_id, clock
        self.threshold, self.learn = threshold, learn
        self.extra_aliases = extra_aliases or {}
        self.key = f"mapping:{spec.name}"
        stored, _ = store.get_state(self.key)
        self.learned: dict[str, dict] = (stored or {}).get("fields", {})
        self._cache: dict[tuple, MatchResult] = {}
        self.decisions: dict[str, dict] = {}

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
        for _ in range(CAS_ATTEMPTS):
            stored, version = self.store.get_state(self.key)
            fields = dict((stored or {}).get("fields", {}))
            for name, entry in fresh.items():
                fields.setdefault(name, entry)  # the first run to learn a mapping keeps the credit
            if self.store.cas_state(self.key, {"fields": fields}, version):
                self.learned = fields
                return
        raise StoreError(f"{self.key}: too much contention saving learned mappings")

    def warnings(self) -> list[str]:
        return [f"{d['source']}: field {d['field']!r} skipped ({d.get('reason') or 'no match'})"
                for d in self.decisions.values() if d["action"] == "skipped"]

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
