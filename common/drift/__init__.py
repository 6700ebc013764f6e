"""Schema drift: map the column names a source sends today onto its canonical fields, and coerce values.

    match_fields(incoming, fields, ...) -> MatchResult    which incoming name carries which canonical field, why
    to_number(value) / to_timestamp(value)                 lenient, unambiguous value coercion (CoerceError)

See `common.drift.matcher` for the matching stages and guards, `common.drift.coerce` for accepted formats, and
bench/drift_accuracy.py for accuracy on the labelled corpus (tests/drift_corpus.json).
"""

from common.drift.coerce import CoerceError, to_number, to_timestamp
from common.drift.matcher import Decision, MatchResult, match_fields

__all__ = ["CoerceError", "Decision", "MatchResult", "match_fields", "to_number", "to_timestamp"]
