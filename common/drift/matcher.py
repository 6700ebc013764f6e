"""Schema drift: map the names a source sends today onto its canonical field spec, and explain every decision.

Each incoming name goes through these stages; the first that yields a target decides (stages run over all
names in turn, so a later-stage match never takes a target from an earlier-stage match of a later column):

    exact       equals a field's canonical name or aliases[0] (case-sensitive)                confidence 1.0
    learned     the `learned` mapping (incoming -> canonical) persisted from earlier runs     confidence 1.0
    alias       case-insensitive, trimmed equality with the canonical name, any alias or an
                `extra_aliases` entry                                                        confidence 1.0
    normalized  equal after normalisation (below)                                             confidence 0.95
    token       equal token multisets, order ignored ("24h_volume" ~ "volume_24h")            confidence 0.90
    fuzzy       rapidfuzz OSA similarity on normalised names (Levenshtein with adjacent
                transpositions, so "Clsoe" ~ "close" is one edit)                             confidence = score

Normalisation: "%" reads as the word "percent"; split on anything not a letter or digit and on camelCase /
PascalCase / letter-digit boundaries; lower-case; merge time windows ("24_h", "24hr", "24hours", "daily",
"1d" -> "24h"); singularise ("Volumes" -> "volume"); expand abbreviations (mkt, mcap, vol, px, hi, lo,
closing, highest, pct, ...); drop the unit "usd" (also glued, "priceusd", and an "in" before it) and, in
dotted JSON paths, the container "quote(s)" outside the leaf. A second "core" form also drops filler words
(current, latest, spot, value, coin, asset, ...; "last" only next to "price" or a window, so "last_volume"
keeps it) and the word "price" when another word is left ("close_price" -> "close", "current_price" -> "price").
Dotted paths are also compared by their leaf segment ("quotes.USD.priceUsd" -> "price"; a trailing currency
segment is skipped: "market_data.current_price.usd" -> "current_price"). A name that equals two fields at the
normalized or token stage is skipped as ambiguous.

Guards for every automatic stage (normalized, token, fuzzy); explicit stages (exact, learned, alias) are trusted:
    key fields (`key=True`) are never targets: they map only by exact name, learned mapping or alias;
    a qualifier word (rank, change, percent, supply, ath, atl, roi, time, id, average, adjusted, ...) or a
    currency (eur, btc, usdt, ...) that none of the field's names carries vetoes the field;
    a time window (7d, 1h, ...) that the field's names do not carry vetoes it (a field without one accepts 24h);
    sample values, when given, must fit the field's type (90 % of the non-blank ones).
A fuzzy match also needs score >= threshold, a lead of >= margin over the best different field, and every word
of the name resembling a word of the target (OSA >= 0.6): fuzzy matching forgives misspelt words, not extra
ones ("market_cap_fd" is not market_cap_usd). Fuzzy candidates are granted greedily by score; a taken target
is never re-assigned, and the loser is skipped rather than sent to its second choice.
`threshold` applies to the fuzzy stage only: normalized/token equality is not a similarity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from rapidfuzz import process
from rapidfuzz.distance import OSA

from common.drift.coerce import CoerceError, to_number, to_timestamp
from common.drift.names import NameForm, analyse
from common.sources import Field

NORMALIZED_CONFIDENCE = 0.95
TOKEN_CONFIDENCE = 0.9
SCORE_FLOOR = 0.4
"""Scores below this are not worth naming in a reason or in `closest`."""
SAMPLE_FIT_RATIO = 0.9
_TYPE_WORDS = {"number": "numbers", "timestamp": "timestamps", "text": "text"}


@dataclass(frozen=True)
class Decision:
    """What happened to one incoming name."""

    field: str
    mapped_to: str | None
    confidence: float
    action: str  # "mapped" | "skipped"
    method: str | None  # exact | learned | alias | normalized | token | fuzzy; None when skipped
    reason: str | None = None  # why it was skipped

    def to_dict(self) -> dict:
        out = {"field": self.field, "mapped_to": self.mapped_to, "confidence": self.confidence,
               "action": self.action, "method": self.method}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class MatchResult:
    """Accepted mapping, one decision per incoming name (input order), and the required fields left unmapped."""

    mapping: dict[str, str]
    decisions: list[Decision]
    missing_required: list[str]
    _scores: dict[str, list[tuple[str, float]]] = field(default_factory=dict, repr=False, compare=False)

    def closest(self, canonical: str, limit: int = 3) -> list[tuple[str, float]]:
        """Incoming names most similar to `canonical` (not mapped to another field), best first."""
        return self._scores.get(canonical, [])[:limit]

    def drift(self) -> list[dict]:
        """Every decision that was not an exact match, in the run-summary shape."""
        return [d.to_dict() for d in self.decisions if d.method != "exact"]

    def to_dict(self) -> dict:
        return {"mapping": dict(self.mapping), "decisions": [d.to_dict() for d in self.decisions],
                "missing_required": list(self.missing_required)}


@dataclass(frozen=True)
class _Target:
    field: Field
    tokens: frozenset[str]  # every word of every name of the field
    windows: frozenset[str]
    vocabulary: tuple[str, ...]  # its words and compact names: what a fuzzy match's words must resemble


@dataclass(frozen=True)
class _Spec:
    """Everything about a field spec that does not depend on the incoming names (cached per spec)."""

    targets: tuple[_Target, ...]
    exact: dict[str, int]
    alias: dict[str, int]
    norm: tuple[dict[str, frozenset[int]], ...]  # (with windows, window-less names, windows removed)
    token: tuple[dict[str, frozenset[int]], ...]
    fuzzy_win: tuple[list[str], list[tuple[int, ...]]]  # choices for rapidfuzz, and the targets of each
    fuzzy_nowin: tuple[list[str], list[tuple[int, ...]]]


def match_fields(
    incoming: Sequence[str],
    fields: Sequence[Field],
    *,
    threshold: float = 0.8,
    margin: float = 0.05,
    extra_aliases: Mapping[str, Sequence[str]] | None = None,
    samples: Mapping[str, Sequence[object]] | None = None,
    learned: Mapping[str, str] | None = None,
) -> MatchResult:
    """Decide, for every incoming name, which canonical field it carries (or why it is skipped).

    Args:
        incoming: column names / flattened JSON paths as received; bad entries (non-strings, blanks,
            duplicates) get a skipped decision instead of an exception.
        fields: the source's canonical field spec.
        threshold: minimum fuzzy score (0..1) to accept a fuzzy match; other stages ignore it.
        margin: how far the best fuzzy field must lead the best different field.
        extra_aliases: canonical name -> more accepted names (explicit, like `Field.aliases`); unknown
            canonical names are ignored.
        samples: incoming name -> a few of its values, for the type check of automatic matches.
        learned: incoming name -> canonical name persisted from earlier runs; entries naming a field the
            spec no longer has are ignored.
    """
    extras = tuple(sorted((k, tuple(v)) for k, v in (extra_aliases or {}).items()))
    spec = _build_spec(tuple(fields), extras)
    targets = spec.targets
    samples = samples or {}
    decisions: list[Decision | None] = [None] * len(incoming)
    taken: dict[int, str] = {}
    seen: set[str] = set()
    pending: list[int] = []

    def decide(i: int, target: int | None, confidence: float, method: str | None, reason: str | None = None):
        if target is not None and reason is None:
            taken[target] = incoming[i]
            decisions[i] = Decision(incoming[i], targets[target].field.name, round(confidence, 3), "mapped", method)
        else:
            decisions[i] = Decision(_label(incoming[i]), None, round(confidence, 3), "skipped", None, reason)

    for i, name in enumerate(incoming):
        if not isinstance(name, str):
            decide(i, None, 0.0, None, "not a string")
        elif not name.strip():
            decide(i, None, 0.0, None, "empty name")
        elif name in seen:
            decide(i, None, 0.0, None, "duplicate column")
        else:
            seen.add(name)
            pending.append(i)

    by_canonical = {t.field.name: n for n, t in enumerate(targets)}
    explicit_stages = (
        ("exact", lambda name: spec.exact.get(name)),
        ("learned", lambda name: by_canonical.get((learned or {}).get(name))),
        ("alias", lambda name: spec.alias.get(name.strip().casefold())),
    )
    for method, lookup in explicit_stages:
        still = []
        for i in pending:
            target = lookup(incoming[i])
            if target is None:
                still.append(i)
            elif target in taken:
                decide(i, None, 1.0, None, f"target already taken by {taken[target]}")
            else:
                decide(i, target, 1.0, method)
        pending = still

    forms = {i: analyse(incoming[i]) for i in pending}
    scores = _score(spec, forms)

    def refuse(i: int, target: int, method: str, confidence: float) -> str | None:
        """Why an automatic match of incoming[i] onto `target` cannot be accepted, or None."""
        fld = targets[target].field
        if fld.key:
            return (f"key field {fld.name} maps only by exact name, learned mapping or alias "
                    f"({method} match {confidence:.2f})")
        if target in taken:
            return f"target already taken by {taken[target]}"
        return _sample_misfit(samples.get(incoming[i]), fld.type)

    for method, indexes, confidence in (("normalized", spec.norm, NORMALIZED_CONFIDENCE),
                                        ("token", spec.token, TOKEN_CONFIDENCE)):
        still = []
        for i in pending:
            form = forms[i]
            hits = {t for t in _lookup(form, indexes, method) if _veto(form, targets[t]) is None}
            if not hits:
                still.append(i)
            elif len(hits) > 1:
                names = " vs ".join(sorted(targets[t].field.name for t in hits))
                decide(i, None, confidence, None, f"ambiguous: {names} ({method} match)")
            else:
                target = hits.pop()
                decide(i, target, confidence, method, refuse(i, target, method, confidence))
        pending = still

    offers = []
    for i in pending:
        ranked = sorted(((s, t) for t, s in scores[i].items()), key=lambda st: (-st[0], st[1]))
        form = forms[i]
        allowed = [(s, t) for s, t in ranked if _veto(form, targets[t]) is None
                   and (s < threshold - margin or _stray_word(form, targets[t]) is None)]
        best, target = allowed[0] if allowed else (0.0, None)
        if target is None or best < threshold:
            decide(i, None, ranked[0][0] if ranked else 0.0, None, _why_not(forms[i], ranked, targets, threshold))
            continue
        runner_up = allowed[1] if len(allowed) > 1 else None
        if runner_up is not None and best - runner_up[0] < margin - 1e-9:
            decide(i, None, best, None, f"ambiguous: {targets[target].field.name} {best:.2f} vs "
                                        f"{targets[runner_up[1]].field.name} {runner_up[0]:.2f}")
            continue
        why = refuse(i, target, "fuzzy", best)
        if why is not None:
            decide(i, None, best, None, why)
        else:
            offers.append((best, i, target))
    for best, i, target in sorted(offers, key=lambda o: (-o[0], o[1])):
        decide(i, target, best, "fuzzy", f"target already taken by {taken[target]}" if target in taken else None)

    mapping = {d.field: d.mapped_to for d in decisions if d.action == "mapped"}
    mapped_fields = set(mapping.values())
    missing = [t.field.name for t in targets if t.field.required and t.field.name not in mapped_fields]
    return MatchResult(mapping, list(decisions), missing, _closest_table(incoming, mapping, spec, forms, scores))


# ------------------------------------------------------------------------------------------- spec indexes

@lru_cache(maxsize=64)
def _build_spec(fields: tuple[Field, ...], extras: tuple[tuple[str, tuple[str, ...]], ...]) -> _Spec:
    extra = dict(extras)
    targets, exact, alias = [], {}, {}
    norm: tuple[dict, ...] = ({}, {}, {})
    token: tuple[dict, ...] = ({}, {}, {})
    fuzzy: tuple[dict[str, set[int]], dict[str, set[int]]] = ({}, {})
    for n, fld in enumerate(fields):
        names = [fld.name, *fld.aliases, *extra.get(fld.name, ())]
        for name in (fld.name, *fld.aliases[:1]):
            exact.setdefault(name, n)
        for name in names:
            alias.setdefault(name.strip().casefold(), n)
        forms = [analyse(name) for name in names]
        for form in forms:
            for keys, index in ((form.norm, norm), (form.tokens_sorted, token)):
                for key in keys[0]:
                    index[0].setdefault(key, set()).add(n)
                    if not form.windows:
                        index[1].setdefault(key, set()).add(n)
                for key in keys[1]:
                    index[2].setdefault(key, set()).add(n)
            for strings, owners in zip(form.fuzzy, fuzzy):
                for string in strings:
                    owners.setdefault(string, set()).add(n)
        tokens = frozenset().union(*(f.all_tokens for f in forms))
        vocabulary = tuple(sorted(tokens | frozenset().union(*(f.norm[0] for f in forms))))
        targets.append(_Target(fld, tokens, frozenset().union(*(f.windows for f in forms)), vocabulary))
    freeze = lambda idx: tuple({k: frozenset(v) for k, v in d.items()} for d in idx)  # noqa: E731
    fuzzy_win, fuzzy_nowin = ((list(d), [tuple(sorted(v)) for v in d.values()]) for d in fuzzy)
    return _Spec(tuple(targets), exact, alias, freeze(norm), freeze(token), fuzzy_win, fuzzy_nowin)


def _lookup(form: NameForm, indexes: tuple[dict[str, frozenset[int]], ...], method: str) -> set[int]:
    """Targets whose names equal `form` at this stage; window-less names meet windowed ones without the window."""
    keys = form.norm if method == "normalized" else form.tokens_sorted
    with_windows, windowless, windows_removed = indexes
    hits: set[int] = set()
    for key in keys[0]:
        hits |= with_windows.get(key, frozenset())
        if not form.windows:
            hits |= windows_removed.get(key, frozenset())
    for key in keys[1]:
        hits |= windowless.get(key, frozenset())
    return hits


def _score(spec: _Spec, forms: dict[int, NameForm]) -> dict[int, dict[int, float]]:
    """Best fuzzy score of each pending name against each target (never window-less vs window-less variants)."""
    cache: dict[tuple[str, bool], dict[int, float]] = {}

    def against(query: str, with_nowin: bool) -> dict[int, float]:
        found = cache.get((query, with_nowin))
        if found is None:
            found = {}
            lists = (spec.fuzzy_win, spec.fuzzy_nowin) if with_nowin else (spec.fuzzy_win,)
            for choices, owners in lists:
                for _, score, k in process.extract(query, choices, scorer=OSA.normalized_similarity,
                                                   limit=None, score_cutoff=SCORE_FLOOR):
                    for owner in owners[k]:
                        if score > found.get(owner, 0.0):
                            found[owner] = score
            cache[(query, with_nowin)] = found
        return found

    out: dict[int, dict[int, float]] = {}
    for i, form in forms.items():
        best: dict[int, float] = {}
        for strings, with_nowin in ((form.fuzzy[0], True), (form.fuzzy[1], False)):
            for query in strings:
                for target, score in against(query, with_nowin).items():
                    if score > best.get(target, 0.0):
                        best[target] = score
        out[i] = {t: round(s, 3) for t, s in best.items()}
    return out


# ----------------------------------------------------------------------------------------------- guards

def _veto(form: NameForm, target: _Target) -> str | None:
    """Why `form` cannot mean `target` whatever the similarity: a qualifier, currency or window it lacks."""
    name = target.field.name
    qualifiers = form.qualifiers - target.tokens
    if qualifiers:
        return f"'{min(qualifiers)}' marks a different quantity than {name}"
    currencies = form.currencies - target.tokens
    if currencies:
        return f"currency {min(currencies).upper()} is not {name}'s"
    windows = form.windows - target.windows
    if windows and (target.windows or windows - {"24h"}):
        return f"time window {min(windows)} does not fit {name}"
    return None


STRAY_WORD_SIMILARITY = 0.6


def _stray_word(form: NameForm, target: _Target) -> str | None:
    """For fuzzy matches: a word of the name that resembles nothing in the target ("market_cap_fd": "fd").

    Fuzzy matching is for misspelt words, not for extra ones: a whole unknown word is a different quantity.
    Passes when every word of at least one of the name's forms resembles (OSA >= 0.6) a word or compact name
    of the target.
    """
    stray = None
    for view in form.views:
        for word in view:
            if word in target.tokens or word in form.windows or process.extractOne(
                    word, target.vocabulary, scorer=OSA.normalized_similarity,
                    score_cutoff=STRAY_WORD_SIMILARITY) is not None:
                continue
            stray = stray or word
            break
        else:
            return None
    return f"extra word '{stray}' resembles nothing in {target.field.name}"


def _why_not(form: NameForm, ranked: list[tuple[float, int]], targets, threshold: float) -> str:
    if not ranked:
        return "no similar field"
    score, target = ranked[0]
    veto = _veto(form, targets[target]) or (_stray_word(form, targets[target]) if score >= threshold else None)
    if veto is not None and score >= threshold:
        return veto
    return f"below threshold {threshold:.2f} (best: {targets[target].field.name} {score:.2f})"


def _sample_misfit(values: Sequence[object] | None, type_: str) -> str | None:
    if not values:
        return None
    present = [v for v in values if v is not None and not (isinstance(v, str) and not v.strip())]
    if not present:
        return None
    fit = sum(1 for v in present if _fits(v, type_))
    if fit >= SAMPLE_FIT_RATIO * len(present):
        return None
    return f"sample values are not {_TYPE_WORDS.get(type_, type_)} ({fit} of {len(present)} fit)"


def _fits(value: object, type_: str) -> bool:
    if type_ == "text":
        return isinstance(value, str)
    try:
        if type_ == "number":
            return to_number(value) is not None
        if type_ == "timestamp":
            to_timestamp(value)
            return True
    except CoerceError:
        return False
    return True


def _closest_table(incoming, mapping, spec: _Spec, forms, scores) -> dict[str, list[tuple[str, float]]]:
    table: dict[str, list[tuple[str, float]]] = {}
    scored = {incoming[i] for i in forms}
    for n, target in enumerate(spec.targets):
        name = target.field.name
        rows = [(incoming[i], scores[i][n]) for i in forms if n in scores[i] and mapping.get(incoming[i], name) == name]
        rows += [(k, 1.0) for k, v in mapping.items() if v == name and k not in scored]
        table[name] = sorted(rows, key=lambda r: -r[1])
    return table


def _label(name: object) -> str:
    return name if isinstance(name, str) else repr(name)
