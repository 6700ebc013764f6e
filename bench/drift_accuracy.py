"""Schema-drift matcher accuracy on the labelled corpus (tests/drift_corpus.json), plus a threshold sweep.

    .venv/bin/python bench/drift_accuracy.py                 # default threshold 0.8, prints every error
    .venv/bin/python bench/drift_accuracy.py --alone         # every case matched on its own (no other columns)
    .venv/bin/python bench/drift_accuracy.py --threshold 0.85

How a case is run. A case with an expected field is placed among its source's normal columns (the corpus's
`columns`) with the columns that field already maps from (its canonical name and aliases) removed: the renamed
column replaces the documented one, and every other column is present, so "target already taken" and margins
behave as in a real batch. A case expected to map to nothing is matched alone against the spec, with every
target free: the strictest setting for traps, which cannot hide behind a target that happens to be taken.

Counting. A positive is a case the matcher mapped; it is correct when it mapped to the expected field.
precision = correct / positives; recall = correct / cases with an expected field; key errors = mappings onto a
key field other than the expected one (must be 0). Targets: precision >= 0.98, recall >= 0.90.
Exit code 0 whenever the measurement ran (missed targets are marked FAIL, as in bench/ingest_csv.py); the last
line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.drift.matcher import Decision, match_fields  # noqa: E402
from common.sources import COINGECKO_MARKET_FIELDS, COINPAPRIKA_TICKER_FIELDS, CSV_HISTORY_FIELDS  # noqa: E402

CORPUS = REPO_ROOT / "tests" / "drift_corpus.json"
SPECS = {"source_a": COINPAPRIKA_TICKER_FIELDS, "source_b": CSV_HISTORY_FIELDS, "source_c": COINGECKO_MARKET_FIELDS}
MIN_PRECISION = 0.98
MIN_RECALL = 0.90
SWEEP = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def scenario(case: dict, columns: dict[str, list[str]], *, alone: bool = False) -> list[str]:
    """The incoming names a case is matched as: see the module docstring. The case's name is always last."""
    if alone or case["expected"] is None:
        return [case["incoming"]]
    target = next(f for f in SPECS[case["source"]] if f.name == case["expected"])
    documented = {target.name, *target.aliases}
    others = [c for c in columns[case["source"]] if c not in documented and c != case["incoming"]]
    return [*others, case["incoming"]]


def run_case(case: dict, columns: dict[str, list[str]], *, threshold: float = 0.8, alone: bool = False) -> Decision:
    names = scenario(case, columns, alone=alone)
    return match_fields(names, SPECS[case["source"]], threshold=threshold).decisions[-1]


def evaluate(corpus: dict, *, threshold: float, alone: bool, only: str | None = None) -> dict:
    """Precision, recall, F1 and errors over the corpus (or over the cases whose `set` is `only`)."""
    cases = [c for c in corpus["cases"] if only is None or c.get("set") == only]
    keys = {s: {f.name for f in fields if f.key} for s, fields in SPECS.items()}
    positives = correct = key_errors = 0
    expected_total = sum(1 for c in cases if c["expected"] is not None)
    errors, by_category = [], Counter()
    totals = Counter(c["category"] for c in cases)
    for case in cases:
        decision = run_case(case, corpus["columns"], threshold=threshold, alone=alone)
        got = decision.mapped_to
        if got is not None:
            positives += 1
            if got == case["expected"]:
                correct += 1
            elif got in keys[case["source"]]:
                key_errors += 1
        if got == case["expected"]:
            by_category[case["category"]] += 1
        else:
            errors.append((case, decision))
    precision = correct / positives if positives else 1.0
    recall = correct / expected_total if expected_total else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "cases": len(cases), "expected_mapped": expected_total,
            "positives": positives, "correct": correct, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4), "key_errors": key_errors, "errors": errors,
            "by_category": {k: (by_category[k], totals[k]) for k in sorted(totals)}}


def speed(repeats: int = 5) -> float:
    """Best wall time in ms of one match over 500 drifted names x the CSV spec (cold caches each time)."""
    from common.drift import matcher

    names = [f"{base}_{n}" for n in range(50) for base in
             ("close_price", "Volumne", "mkt_cap", "percent_change_24h", "circulating_supply", "Hgih", "quotes.USD.x",
              "opn", "Market Cap", "ath")]
    best = float("inf")
    for _ in range(repeats):
        matcher.analyse.cache_clear()
        matcher._build_spec.cache_clear()
        started = time.perf_counter()
        match_fields(names, CSV_HISTORY_FIELDS)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--alone", action="store_true", help="match every case on its own")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args(argv)
    corpus = json.loads(args.corpus.read_text(encoding="utf-8"))

    main_run = evaluate(corpus, threshold=args.threshold, alone=args.alone)
    mode = "each case alone" if args.alone else "renamed column among the source's columns; traps alone"
    print(f"corpus: {main_run['cases']} cases ({main_run['expected_mapped']} with an expected field), mode: {mode}")
    print(f"threshold {args.threshold:.2f}: mapped {main_run['positives']}, correct {main_run['correct']}")
    checks = {
        "precision": (main_run["precision"], f">= {MIN_PRECISION}", main_run["precision"] >= MIN_PRECISION),
        "recall": (main_run["recall"], f">= {MIN_RECALL}", main_run["recall"] >= MIN_RECALL),
        "f1": (main_run["f1"], "(report)", True),
        "key_errors": (main_run["key_errors"], "== 0", main_run["key_errors"] == 0),
    }
    for name, (value, rule, ok) in checks.items():
        print(f"  {name:<11} {value:<8} {rule:<8} {'' if ok else 'FAIL <<<<<<'}")
    print("  per category (right/total): " + ", ".join(f"{k} {r}/{t}" for k, (r, t) in main_run["by_category"].items()))
    heldout = evaluate(corpus, threshold=args.threshold, alone=args.alone, only="heldout")
    print(f"  held-out subset (names from other APIs, set=heldout): {heldout['cases']} cases, precision "
          f"{heldout['precision']}, recall {heldout['recall']}, errors {len(heldout['errors'])}")

    print(f"errors ({len(main_run['errors'])}):")
    for case, decision in main_run["errors"]:
        known = "  [known miss]" if case.get("known_miss") else ""
        print(f"  {case['source']} {case['incoming']!r:36} expected {case['expected']!s:15} got "
              f"{decision.mapped_to!s:15} {decision.method or '-':10} {decision.confidence:.3f} "
              f"{decision.reason or ''}{known}")

    print("threshold sweep:    precision  recall   f1      mapped  wrong  key_errors")
    sweep = []
    for threshold in SWEEP:
        run = evaluate(corpus, threshold=threshold, alone=args.alone)
        wrong = run["positives"] - run["correct"]
        sweep.append({k: run[k] for k in ("threshold", "precision", "recall", "f1", "key_errors")})
        print(f"  {threshold:.2f}              {run['precision']:<10} {run['recall']:<8} {run['f1']:<7} "
              f"{run['positives']:<7} {wrong:<6} {run['key_errors']}")

    elapsed_ms = speed()
    print(f"speed: 500 names x {len(CSV_HISTORY_FIELDS)} fields, cold caches: {elapsed_ms:.1f} ms (best of 5)")
    summary = {k: main_run[k] for k in ("threshold", "cases", "expected_mapped", "positives", "correct", "precision",
                                         "recall", "f1", "key_errors")}
    summary.update(errors=len(main_run["errors"]), heldout={k: heldout[k] for k in ("cases", "precision", "recall")},
                   sweep=sweep, speed_ms_500_names=round(elapsed_ms, 1),
                   all_pass=all(ok for _, _, ok in checks.values()))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
