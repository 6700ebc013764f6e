"""The text a person receives about an incident: what failed, since when, the runs and their errors, where to look.

Composed from the incident's stored state only, so every process (and every retry) writes the same message; the
caller scrubs it before it leaves.
"""

from __future__ import annotations


from common.alerts.notifiers import Message
from common.clock import epoch_of, iso_utc

PREFIX = "[crypto-etl]"
LABELS = {"opened": "FIRING", "reminder": "REMINDER", "resolved": "RESOLVED"}

_LEDGER = "the run ledger (look up the run ids above) and the logs of those runs (search for their run ids)"
_QUARANTINE = "`etl quarantine list` shows quarantined rows and why; after fixing a mapping, `etl quarantine replay`"
_HINTS = {
    "pass_failed": "every stage's run is listed in the pass's ledger entry",
    "source_failing": "the source's settings (URL, API key, file path) and whether the source itself is up",
    "source_stale": "the source's settings (URL, API key, file path), whether the source is up, and whether "
                    "the trigger is running passes at all",
    "quarantine_ratio": "a changed source format (renamed or new columns, new date or number formats)",
}


def name_of(doc: dict) -> str:
    """The incident's stable name, the same in the FIRING and the RESOLVED message."""
    subject = doc["subject"]
    return {
        "pass_failed": "pipeline pass failing",
        "source_failing": f"{subject} extract failing",
        "source_stale": f"{subject}: no successful extract",
        "quarantine_ratio": "quarantine ratio above the limit",
    }.get(doc["kind"], f"{doc['kind']} {subject}")


def detail_of(doc: dict, now: float) -> str:
    """One line with the numbers behind the incident as last seen."""
    facts, streak = doc.get("facts", {}), doc.get("streak", 0)
    kind = doc["kind"]
    if kind == "pass_failed":
        return "the last pass failed" if streak == 1 else f"the last {streak} passes failed"
    if kind == "source_failing":
        return f"{doc['subject']} failed {streak} pass{'es' if streak != 1 else ''} in a row"
    if kind == "source_stale":
        age = duration(now - epoch_of(doc.get("failing_since") or iso_utc(now)))
        return f"no successful extract for {age} (limit {duration(facts.get('limit_s', 0))})"
    if kind == "quarantine_ratio":
        return (f"a pass quarantined {facts.get('ratio', 0):.1%} of its rows ({facts.get('quarantined', 0)} of "
                f"{facts.get('rows', 0)}; limit {facts.get('limit', 0):.1%})")
    return ""


def compose(doc: dict, transition: str, now: float, repeat_s: float) -> Message:
    label, name = LABELS[transition], name_of(doc)
    since = doc.get("failing_since") or doc.get("opened_at") or iso_utc(now)
    if transition == "resolved":
        subject = f"{PREFIX} {label}: {name}"
        head = [f"{label}: {name}", f"Cleared by pass {doc.get('resolved_by', '?')} at {doc.get('resolved_at', '?')}.",
                f"It had lasted since {since} ({duration(now - epoch_of(since))})."]
    else:
        detail = detail_of(doc, now)
        subject = f"{PREFIX} {label}: {name} - {detail}"
        head = [f"{label}: {name}", detail, f"Since: {since} ({duration(now - epoch_of(since))} ago)"]
        if doc["kind"] == "source_stale":
            head.append(doc.get("facts", {}).get("last_ok", ""))
    lines = [*filter(None, head), "", f"Last pass: {doc.get('last_pass', '?')}", "Runs involved (oldest first):"]
    for run in doc.get("runs", []) or [{"run_id": "-", "what": "no failed run recorded", "status": "", "errors": []}]:
        errors = "; ".join(run.get("errors", [])) or "no error recorded"
        run_id = run.get("run_id") or "no run recorded (the stage was not reached)"
        lines.append(f"  - {run_id} ({run.get('what', '')}, {run.get('status', '')}): {errors}")
    lines += ["", "Where to look:", f"  - {_LEDGER}", f"  - {_HINTS.get(doc['kind'], '')}", f"  - {_QUARANTINE}"]
    if transition != "resolved":
        lines += ["", f"A reminder follows every {duration(repeat_s)} while this lasts; a RESOLVED message when it "
                      "clears."]
    lines.append(f"(incident {doc['kind']}:{doc['subject']}, message written {iso_utc(now)})")
    return Message(subject=subject, text="\n".join(lines))


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
