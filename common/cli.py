"""`etl`: run pipeline stages in-process and serve the API.

    etl run --source all                                one pass (common.orchestrator): the pass and its stages as
                                                        JSON, a table on stderr; exit 1 unless the pass succeeded
    etl run --source a|b|c [--stage extract|transform|all]   that source's stages; exit 1 unless every run succeeded
    etl quarantine list|replay [--source b]             inspect / re-load quarantined rows after a mapping fix
    etl serve [--port 8080] [--host 127.0.0.1]
    etl migrate                                         upgrade the store in place (also done on first use)
    etl prune [--now ISO] [--step 1000]                 delete what retention allows (also after every pass) and
                                                        give the space back; a line per step on stderr
    etl token [--ttl 3600] [--sub NAME]                 mint a bearer token for POST /refresh (needs JWT_SECRET)
"""

from __future__ import annotations

import argparse
import json
import sys

from common.errors import EtlError
from common.sources import SHORT_NAMES, SOURCE_NAMES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _progress_printer(stream=sys.stderr):
    state = {"last": -1}

    def progress(rows: int, done: int, total: int) -> None:
        percent = int(done * 100 / total) if total else 100
        if percent != state["last"]:
            state["last"] = percent
            stream.write(f"\rextract: {rows:,} rows, {percent}% of {total / 1e6:.1f} MB")
            stream.flush()

    return progress


def cmd_run(args: argparse.Namespace) -> int:
    from common.pipeline import run_extract, run_transform
    from common.wiring import get_wiring

    wiring = get_wiring()
    if args.source == "all":
        return run_one_pass(wiring, quiet=args.quiet)
    runs = []  # one source's stages, one after the other (not a pass: no `pipeline` run, no alerts)
    if args.stage in ("extract", "all"):
        progress = _progress_printer() if not args.quiet and sys.stderr.isatty() else None
        runs.append(run_extract(args.source, wiring, progress=progress))
        if progress:
            sys.stderr.write("\n")
    if args.stage in ("transform", "all"):
        runs.append(run_transform(wiring))
    ok = all(run.status == "succeeded" for run in runs)
    print(json.dumps({"ok": ok, "runs": [run.to_dict() for run in runs]}, indent=2))
    return EXIT_OK if ok else EXIT_FAILED


def run_one_pass(wiring, quiet: bool = False) -> int:
    """Every source and transform/load as one pass, in this process."""
    from common.invokers import InProcessInvoker
    from common.orchestrator import describe_pass, run_pass

    run = run_pass(wiring, InProcessInvoker(wiring))
    ok = run.status == "succeeded"
    print(json.dumps({"ok": ok, "pass": run.to_dict()}, indent=2))
    if not quiet:
        sys.stderr.write(describe_pass(run.to_dict()))
    return EXIT_OK if ok else EXIT_FAILED


def cmd_quarantine(args: argparse.Namespace) -> int:
    from common.pipeline import run_replay
    from common.sources import source_spec
    from common.wiring import get_wiring

    wiring = get_wiring()
    if args.action == "list":
        source = source_spec(args.source, wiring.settings).name if args.source else None
        entries = wiring.store.list_quarantine(source, limit=args.limit, unresolved_only=not args.all)
        print(json.dumps({"entries": entries, "unresolved": wiring.store.count_quarantine(source, True)}, indent=2))
        return EXIT_OK
    run = run_replay(wiring, args.source)
    print(json.dumps({"ok": run.status == "succeeded", "runs": [run.to_dict()]}, indent=2))
    return EXIT_OK if run.status == "succeeded" else EXIT_FAILED


def cmd_migrate(args: argparse.Namespace) -> int:
    from common.wiring import get_wiring

    found, now = get_wiring().store.migrate()
    print(json.dumps({"ok": True, "schema_version": {"found": found, "now": now}}))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """Exit 0 when the prune finished (or another prune holds the lease), 1 when it stopped early or failed."""
    from common.clock import Deadline
    from common.prune import Retention, prune
    from common.wiring import get_wiring

    wiring = get_wiring()
    settings, clock = wiring.settings, wiring.clock

    def step(kind: str, count: int) -> None:
        sys.stderr.write(f"prune: {kind} {count:+,}\n")
        sys.stderr.flush()

    summary = prune(wiring.store, Retention.from_settings(settings), clock=clock, lease_ttl_s=settings.lease_ttl_s,
                    deadline=Deadline(clock, settings.invocation_budget_s), step=args.step, on_step=step,
                    now=args.now)
    ok = summary["status"] in ("succeeded", "skipped")
    print(json.dumps({"ok": ok, "prune": summary}, indent=2))
    return EXIT_OK if ok else EXIT_FAILED


def cmd_token(args: argparse.Namespace) -> int:
    """Print one HS256 token on stdout (nothing else, so `$(etl token)` works); the secret is never printed."""
    import time

    from common.api.auth import mint_token
    from common.config import Settings

    print(mint_token(Settings.from_env(), args.ttl, args.sub, time.time()))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from common.api.server import serve

    serve(host=args.host, port=args.port, threads=args.threads)
    return EXIT_OK


def _instant(text: str) -> float:
    """An ISO 8601 time with its zone (a zoneless one would be read in the machine's zone) as epoch seconds."""
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a zone (Z or +HH:MM): {text!r}")
    return parsed.timestamp()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etl", description="Crypto-market ETL pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="extract a source and transform/load it, in this process")
    run.add_argument("--source", required=True, choices=[*sorted(SHORT_NAMES), *SOURCE_NAMES, "all"])
    run.add_argument("--stage", default="all", choices=("extract", "transform", "all"))
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.set_defaults(func=cmd_run)
    quarantine = sub.add_parser("quarantine", help="inspect or replay quarantined rows")
    quarantine.add_argument("action", choices=("list", "replay"))
    quarantine.add_argument("--source", choices=[*sorted(SHORT_NAMES), *SOURCE_NAMES])
    quarantine.add_argument("--limit", type=int, default=100, help="list: how many entries")
    quarantine.add_argument("--all", action="store_true", help="list: resolved entries too")
    quarantine.set_defaults(func=cmd_quarantine)
    migrate = sub.add_parser("migrate", help="upgrade a store written by an older version, in place")
    migrate.set_defaults(func=cmd_migrate)
    prune = sub.add_parser("prune", help="delete old processed batches, runs and resolved quarantine; reclaim space")
    prune.add_argument("--now", type=_instant, help="ISO 8601 time with a zone, e.g. 2030-01-01T00:00:00Z: the "
                       "retention windows end there (default: now)")
    prune.add_argument("--step", type=int, default=1000, help="rows deleted per transaction")
    prune.set_defaults(func=cmd_prune)
    token = sub.add_parser("token", help="mint a bearer token for POST /refresh, signed with JWT_SECRET")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
    token.add_argument("--sub", default="operator", help="who the token is for (the subject claim)")
    token.set_defaults(func=cmd_token)
    serve = sub.add_parser("serve", help="serve the REST API")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--threads", type=int, default=8)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.source == "all" and args.stage != "all":
        parser.error("--source all runs a whole pass (every extract, then transform/load); "
                     "--stage takes one source")
    try:
        return args.func(args)
    except EtlError as exc:
        print(json.dumps({"ok": False, "error": exc.to_dict()}), file=sys.stderr)
        return EXIT_USAGE if exc.http_status == 400 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
