"""Incidents judged after every pass: kept in the store, so whoever evaluates a pass sends each message once.

Each incident is one small versioned document, `incident:<kind>:<subject>` (store.get_state / cas_state):

    kinds: pass_failed:pipeline        the pass ended `failed`
           source_failing:<source>     its extract failed ALERT_AFTER_FAILURES passes in a row
           source_stale:<source>       no successful extract for 2x the schedule's period
           quarantine_ratio:pipeline   a pass quarantined more than ALERT_QUARANTINE_RATIO of the rows it read

A transition (opened, reminder, resolved) is *claimed* by writing it into the document's outbox with a fresh claim
id through compare-and-set, before anything is sent: of two processes evaluating the same pass only the one whose
write lands sends. The result is then recorded against that claim; a channel that failed is retried on the next
evaluation (only that channel: one that delivered is never sent the same claim again), and a claim left `sending`
by a process that died is retried once it is clearly stale. Store or notifier trouble is reported, never raised.
"""

from __future__ import annotations

import copy
import logging
import uuid

from common.alerts.messages import compose, name_of
from common.alerts.notifiers import Notifier
from common.alerts.redact import Redactor
from common.clock import epoch_of, iso_utc
from common.config import Settings
from common.store import Run, Store
from common.store.state import update_state

log = logging.getLogger("common.alerts")

MAX_RUNS = 5  # failing runs kept per incident (newest)
MAX_ERRORS, MAX_ERROR_CHARS = 3, 300
CAS_ATTEMPTS = 8
OUTCOME_KEYS = {"opened": "opened", "reminder": "reminded", "resolved": "resolved"}


class Evidence:
    """What one pass says about one incident; `failing` None means it says nothing (e.g. a skipped stage)."""

    def __init__(self, kind: str, subject: str, failing: bool | None, runs: list[dict], facts: dict | None = None,
                 since: str | None = None) -> None:
        self.kind, self.subject, self.failing, self.runs = kind, subject, failing, runs
        self.facts, self.since = facts or {}, since

    @property
    def incident_id(self) -> str:
        return f"{self.kind}:{self.subject}"


def gather(store: Store, settings: Settings, pass_run: Run, now: float, schedule_period_s: float,
           redact: Redactor) -> list[Evidence]:
    """Every condition this pass bears on, from its summary["stages"] and, for staleness, the ledger."""
    stages = pass_run.summary.get("stages", [])
    judged = pass_run.status in ("failed", "succeeded", "partial")
    pass_entry = {"run_id": pass_run.run_id, "what": "pipeline pass", "status": pass_run.status,
                  "errors": _errors(pass_run.summary.get("errors", []))}
    failed_stages = [_entry(s) for s in stages if s.get("status") == "failed"]
    found = [Evidence("pass_failed", "pipeline", pass_run.status == "failed" if judged else None,
                      [pass_entry, *failed_stages])]
    transforms = [s for s in stages if s.get("stage") == "transform_load"]
    rows = sum(s.get("rows_in") or 0 for s in transforms)
    quarantined = sum(s.get("quarantined") or 0 for s in transforms)
    ratio = quarantined / rows if rows else 0.0
    found.append(Evidence("quarantine_ratio", "pipeline", ratio > settings.alert_quarantine_ratio if rows else None,
                          [_entry(s) for s in transforms if s.get("quarantined")],
                          {"ratio": ratio, "rows": rows, "quarantined": quarantined,
                           "limit": settings.alert_quarantine_ratio}))
    sources = list(dict.fromkeys(s["source"] for s in stages if s.get("stage") == "extract" and s.get("source")))
    for source in sources:
        mine = [s for s in stages if s.get("stage") == "extract" and s.get("source") == source]
        last = mine[-1].get("status")
        failing = True if last == "failed" else False if last in ("succeeded", "partial") else None
        found.append(Evidence("source_failing", source, failing, [_entry(s) for s in mine if s["status"] == "failed"]))
        if schedule_period_s and schedule_period_s > 0:
            found.append(_staleness(store, source, now, 2 * schedule_period_s))
    for evidence in found:  # the state is stored and mailed: no secret quoted by an error goes in
        for run in evidence.runs:
            run["errors"] = [redact(e) for e in run["errors"]]
    return found


def _staleness(store: Store, source: str, now: float, limit_s: float) -> Evidence:
    """Judged in `advance` (a source never seen succeeding counts from when alerts first watched it)."""
    good = [r for status in ("succeeded", "partial")
            for r in store.list_runs(stage="extract", source=source, status=status, limit=1)]
    last_ok = max(good, key=lambda r: r.finished_at or r.started_at, default=None)
    recent = [r for r in store.list_runs(stage="extract", source=source, limit=3) if r.status == "failed"]
    runs = [{"run_id": r.run_id, "what": f"extract {source}", "status": r.status,
             "errors": _errors(r.summary.get("errors", []))} for r in reversed(recent)]
    facts = {"limit_s": limit_s}
    since = None
    if last_ok is not None:
        since = last_ok.finished_at or last_ok.started_at
        facts["last_ok"] = f"Last successful extract: run {last_ok.run_id}, {last_ok.status} at {since}"
        facts["last_ok_at"] = epoch_of(since)
    return Evidence("source_stale", source, None, runs, facts, since)


def advance(old: dict | None, ev: Evidence, *, now: float, pass_run: Run, threshold: int, repeat_s: float,
            stale_claim_s: float, channels: list[str]) -> tuple[dict, str | None]:
    """The incident's next state after this evidence, and the transition to announce (None: nothing to send).
    Pure: the caller writes the result by compare-and-set and re-runs this on a conflict."""
    doc = copy.deepcopy(old) if old else {"kind": ev.kind, "subject": ev.subject, "open": False, "streak": 0,
                                          "first_seen": now, "runs": [], "outbox": None}
    transition, retry = None, None
    if doc.get("last_pass") != pass_run.run_id:  # a pass counts once, whoever evaluates it
        doc["last_pass"] = pass_run.run_id
        failing, facts, since = ev.failing, dict(ev.facts), ev.since
        if ev.kind == "source_stale":
            failing = now - facts.get("last_ok_at", doc["first_seen"]) > facts["limit_s"]
            since = since or iso_utc(doc["first_seen"])
            facts.setdefault("last_ok", f"No successful extract recorded since alerts started watching at {since}")
        if failing:
            if doc["streak"] == 0:
                doc["failing_since"], doc["runs"] = since or pass_run.started_at or iso_utc(now), []
            doc["streak"] += 1
            doc["runs"] = (doc["runs"] + ev.runs)[-MAX_RUNS:]
            doc["facts"] = facts
            if not doc["open"] and doc["streak"] >= threshold:
                doc.update(open=True, opened_at=iso_utc(now))
                transition = "opened"
            elif doc["open"] and now - doc.get("last_notice_at", 0) >= repeat_s:
                transition = "reminder"
        elif failing is False:
            if doc["open"]:
                doc.update(open=False, resolved_at=iso_utc(now), resolved_by=pass_run.run_id)
                transition = "resolved"
            doc["streak"] = 0
    box = doc.get("outbox")
    if transition is None and box and (box["state"] == "failed" or now - box["claimed_at"] > stale_claim_s):
        transition, retry = box["message"], box  # a send that failed, or whose process died mid-way
    if transition in ("opened", "reminder") and retry is None:
        doc["last_notice_at"] = now
    if transition is None:
        return doc, None
    pending = [c for c in channels if c not in (retry or {}).get("delivered", [])]
    doc["outbox"] = None if not pending else {
        "message": transition, "claim": uuid.uuid4().hex, "claimed_at": now, "state": "sending",
        "delivered": list((retry or {}).get("delivered", [])), "attempts": (retry or {}).get("attempts", 0) + 1}
    return doc, transition


def evaluate(store: Store, settings: Settings, ev: Evidence, pass_run: Run, *, now: float,
             notifiers: list[Notifier], redact: Redactor, outcome: dict) -> None:
    """Claim this incident's transition (if any) by compare-and-set, then send and record what happened."""
    key, incident = f"incident:{ev.incident_id}", ev.incident_id
    threshold = settings.alert_after_failures if ev.kind == "source_failing" else 1
    stale_claim_s = 60.0 + settings.alert_timeout_s * max(1, len(notifiers))
    channels = [n.name for n in notifiers]
    decided: dict = {}

    def step(old: dict | None) -> dict | None:
        doc, transition = advance(old, ev, now=now, pass_run=pass_run, threshold=threshold,
                                  repeat_s=settings.alert_repeat_s, stale_claim_s=stale_claim_s, channels=channels)
        decided.update(changed=doc != old, transition=transition)
        return doc if doc != old else None

    doc = update_state(store, key, step, attempts=CAS_ATTEMPTS)
    transition = decided["transition"]
    if not decided["changed"] or transition is None:
        return
    outcome[OUTCOME_KEYS[transition]].append(incident)
    message = compose(doc, transition, now, settings.alert_repeat_s)
    message = type(message)(redact(message.subject), redact(message.text))
    box = doc["outbox"]
    attempt = box["attempts"] if box else 1
    note = " (no notifier configured: not sent)" if not notifiers else f" (delivery attempt {attempt})" \
        if attempt > 1 else ""
    level = logging.INFO if transition == "resolved" else logging.WARNING
    log.log(level, "incident %s %s: %s%s", incident, transition, name_of(doc), note, extra={"run_id": pass_run.run_id})
    if box is None:
        return
    results = {}
    for notifier in notifiers:
        if notifier.name in doc["outbox"]["delivered"]:
            continue
        try:
            error = notifier.send(message)
        except Exception as exc:  # a bug in an adapter must not fail the pass
            log.exception("notifier %s raised", notifier.name)
            error = f"{notifier.name}: {type(exc).__name__}: {exc}"
        results[notifier.name] = redact(error) if error else None
    for channel, error in results.items():
        if error:
            outcome["send_failures"].append({"incident": incident, "message": transition, "channel": channel,
                                             "error": error})
            log.warning("incident %s: %s message not delivered by %s: %s", incident, transition, channel, error,
                        extra={"run_id": pass_run.run_id})
    _record(store, key, doc["outbox"]["claim"], results)


def _record(store: Store, key: str, claim: str, results: dict[str, str | None]) -> None:
    """Write the delivery result against our claim; a newer claim meanwhile owns the outbox and we stay out."""

    def record(doc: dict | None) -> dict | None:
        box = (doc or {}).get("outbox")
        if not box or box.get("claim") != claim:
            return None
        box["delivered"] = sorted({*box["delivered"], *(c for c, e in results.items() if not e)})
        errors = {c: e for c, e in results.items() if e}
        if errors:
            box.update(state="failed", errors=errors)
        else:
            doc["outbox"] = None
            doc["last_delivered"] = {"message": box["message"], "claim": claim, "channels": box["delivered"]}
        return doc

    update_state(store, key, record, attempts=CAS_ATTEMPTS)


def _entry(stage: dict) -> dict:
    what = " ".join(filter(None, (stage.get("stage"), stage.get("source"))))
    return {"run_id": stage.get("run_id"), "what": what, "status": stage.get("status"),
            "errors": _errors(stage.get("errors", []))}


def _errors(errors: list) -> list[str]:
    return [str(e)[:MAX_ERROR_CHARS] for e in errors[:MAX_ERRORS]]
