"""Name normalisation for field matching: split, lower-case, merge time windows, expand abbreviations, drop
units and fillers, and keep enough structure (tokens, core tokens, leaf segment) for the matcher's stages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_SPLIT = re.compile(r"[\W_]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=\d)")
_TIME_UNITS = {
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "d": "d", "day": "d", "days": "d",
    "w": "w", "wk": "w", "week": "w", "weeks": "w", "m": "m", "min": "m", "mins": "m", "minute": "m",
    "minutes": "m", "mo": "mo", "month": "mo", "months": "mo", "y": "y", "yr": "y", "yrs": "y", "year": "y",
    "years": "y",
}
_WINDOW_WORD = re.compile(r"^(\d+)(" + "|".join(sorted(_TIME_UNITS, key=len, reverse=True)) + r")$")
_WINDOW = re.compile(r"^(?:\d+(?:h|d|w|m|mo|y)|ytd)$")
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "mkt": ("market",), "mcap": ("market", "cap"), "marketcap": ("market", "cap"), "mktcap": ("market", "cap"),
    "capitalization": ("cap",), "capitalisation": ("cap",), "vol": ("volume",), "px": ("price",),
    "closing": ("close",), "opening": ("open",), "highest": ("high",), "lowest": ("low",), "hi": ("high",),
    "lo": ("low",), "chg": ("change",), "pct": ("percent",), "perc": ("percent",), "percentage": ("percent",),
    "adj": ("adjusted",), "avg": ("average",), "mean": ("average",), "prev": ("previous",), "ts": ("timestamp",),
    "dollar": ("usd",), "daily": ("24h",), "qty": ("quantity",), "amt": ("amount",),
}
_UNITS = frozenset({"usd"})
_CURRENCIES = frozenset({
    "eur", "gbp", "jpy", "cny", "krw", "inr", "aud", "cad", "chf", "rub", "brl", "try", "sgd", "hkd", "nzd", "mxn",
    "zar", "btc", "xbt", "eth", "bnb", "sat", "sats", "usdt", "usdc", "busd", "dai",
})
_QUALIFIERS = frozenset({
    "rank", "change", "percent", "supply", "circulating", "ath", "atl", "roi", "diluted", "fdv", "dominance",
    "ratio", "rate", "beta", "delta", "diff", "difference", "average", "median", "max", "min", "adjusted",
    "weighted", "previous", "time", "date", "timestamp", "id", "count", "trade", "fee", "interest", "bid", "ask",
    "spread", "sparkline", "target", "yield", "return", "index", "growth", "score",
})
_FILLERS = frozenset({
    "current", "latest", "spot", "value", "amount", "coin", "asset", "token", "crypto", "currency", "the", "of",
})
_LAST = "last"  # filler next to "price" or a window ("last_price", "volume_last_24_hours"), not in "last_volume"
_CONTAINERS = frozenset({"quote"})  # dropped from the non-leaf segments of a dotted path


@dataclass(frozen=True)
class NameForm:
    """The comparable forms of one name. Pairs are (with the time window, with it removed)."""

    norm: tuple[frozenset[str], frozenset[str]]  # compact token strings ("marketcap")
    tokens_sorted: tuple[frozenset[str], frozenset[str]]  # sorted tokens ("24h volume")
    fuzzy: tuple[frozenset[str], frozenset[str]]  # compact strings, as written and token-sorted
    windows: frozenset[str]
    qualifiers: frozenset[str]
    currencies: frozenset[str]
    all_tokens: frozenset[str]
    views: tuple[tuple[str, ...], ...]  # the token lists compared (whole name / leaf; as written / core)


_EMPTY = NameForm((frozenset(), frozenset()), (frozenset(), frozenset()), (frozenset(), frozenset()),
                  frozenset(), frozenset(), frozenset(), frozenset(), ())


@lru_cache(maxsize=16384)
def analyse(name: str) -> NameForm:
    """Normalise `name` (see the module docstring) into the forms the automatic stages compare."""
    text = name.strip()
    is_path = "." in text and not any(c.isspace() for c in text)
    segments = [_segment_words(s) for s in (text.split(".") if is_path else [text])]
    segments = [s for s in segments if s]
    if not segments:
        return _EMPTY
    leaf = len(segments) - 1
    while leaf > 0 and all(t in _UNITS or t in _CURRENCIES for t in segments[leaf]):
        leaf -= 1
    every = [t for words in segments for t in words]
    full = _drop_units([t for n, words in enumerate(segments) for t in words if n >= leaf or t not in _CONTAINERS])
    views = [full or every]
    if len(segments) > 1:
        views.append(_drop_units(segments[leaf]) or segments[leaf])
    windows = frozenset(t for t in every if _WINDOW.match(t))
    keys: tuple[set[str], ...] = (set(), set(), set(), set(), set(), set())
    variants = list(dict.fromkeys(tuple(v) for view in views for v in (view, _core(view, windows))))
    for variant in variants:
        bare = [t for t in variant if t not in windows]
        for offset, tokens in ((0, variant), (1, bare if windows and bare else None)):
            if tokens:
                ordered = sorted(tokens)
                keys[offset].add("".join(tokens))
                keys[2 + offset].add(" ".join(ordered))
                keys[4 + offset].update(("".join(tokens), "".join(ordered)))
    tokens_all = frozenset(every)
    f = [frozenset(k) for k in keys]
    return NameForm(
        (f[0], f[1]), (f[2], f[3]), (f[4], f[5]),
        windows, tokens_all & _QUALIFIERS, tokens_all & _CURRENCIES, tokens_all, tuple(variants),
    )


def _segment_words(segment: str) -> list[str]:
    segment = segment.replace("%", " percent ")  # "Vol%", "Change %": a percentage, not the quantity
    words = [w.lower() for chunk in _SPLIT.split(segment) if chunk for w in _CAMEL.split(chunk) if w]
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.isdigit() and i + 1 < len(words) and words[i + 1] in _TIME_UNITS:
            word += words[i + 1]
            i += 1
        i += 1
        window = _WINDOW_WORD.match(word)
        if window:
            amount, unit = window.group(1), _TIME_UNITS[window.group(2)]
            out.append("24h" if (amount, unit) == ("1", "d") else amount + unit)
        else:
            out.extend(_word(word))
    return out


def _word(word: str) -> tuple[str, ...]:
    if word in _SYNONYMS:
        return _SYNONYMS[word]
    if not word.isalpha() or word in _CURRENCIES:
        return (word,)
    if len(word) > 3 and word.endswith("usd"):
        return (*_word(word[:-3]), "usd")
    if len(word) >= 6 and word.startswith("usd"):
        return ("usd", *_word(word[3:]))
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return _SYNONYMS.get(word, (word,))


def _drop_units(tokens: list[str]) -> list[str]:
    """Without "usd" (and an "in" right before a currency): the whole pipeline is in US dollars."""
    out = []
    for n, token in enumerate(tokens):
        if token in _UNITS:
            continue
        if token == "in" and n + 1 < len(tokens) and (tokens[n + 1] in _UNITS or tokens[n + 1] in _CURRENCIES):
            continue
        out.append(token)
    return out


def _core(tokens: list[str], windows: frozenset[str]) -> list[str]:
    """Without filler words, and without "price" when it only qualifies another word ("close_price")."""
    fillers = _FILLERS | {_LAST} if "price" in tokens or windows.intersection(tokens) else _FILLERS
    kept = [t for t in tokens if t not in fillers] or tokens
    if "price" in kept and any(t != "price" and t not in windows for t in kept):
        kept = [t for t in kept if t != "price"]
    return kept
