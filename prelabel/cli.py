"""The command line: the only place that reads the environment, configures logging and exits."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .allowlist import ALLOWLIST_ENV, AllowList
from .config import EXIT_ERROR, EXIT_JOB_ERROR, EXIT_OK, Engine
from .endpoint import Endpoint
from .errors import JobFileError, PrelabelError
from .plan import format_plan, make_plan
from .queue import prepare, submit, submit_spool
from .outputs.export import exit_code_for, export
from .redact import RedactingFilter, add_secret, redact
from .store import open_store

# The commands that talk to an endpoint import the LLM stack (the SDK alone takes most of a second)
# when they run: `status`, `plan` and `submit` start at once.

log = logging.getLogger("prelabel")


def default_db() -> str:
    if os.environ.get("PRELABEL_DB"):
        return os.environ["PRELABEL_DB"]
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return str(data / "prelabel" / "prelabel.db")


def _allowed() -> AllowList:
    """The endpoints a job file may name: $OPENAI_BASE_URL, OpenAI's and $PRELABEL_ALLOWED_BASE_URLS."""
    allowed = AllowList.of([os.environ.get("OPENAI_BASE_URL")], skip_invalid=True)
    try:
        extra = AllowList.of(os.environ.get(ALLOWLIST_ENV, "").split(","))
    except ValueError as e:
        raise PrelabelError(f"{ALLOWLIST_ENV}: {e}") from None
    return AllowList(tuple(dict.fromkeys(allowed.prefixes + extra.prefixes)))


def _endpoint(simulate: bool = False) -> Endpoint:
    if simulate:  # the built-in simulator's URL is known once it starts; its identity before
        return Endpoint("sk-simulator", None, override=True, simulated=True)
    # An empty variable is unset (compose and shells pass `VAR=` for "not configured"): an empty
    # base_url would send every request to nowhere.
    return Endpoint(api_key=os.environ.get("OPENAI_API_KEY") or None,
                    base_url=os.environ.get("OPENAI_BASE_URL") or None, allowed=_allowed())


def _say(outcome) -> None:
    if outcome.report is None:
        print(f"{outcome.job_id}: this worker's share is done; another worker is finishing the job")
        return
    if "error" in outcome.report:
        print(f"{outcome.job_id}: error: {redact(outcome.report['error'])}", file=sys.stderr)
        if outcome.out_dir is not None:
            print(f"  what finished is written to {outcome.out_dir}", file=sys.stderr)
        return
    r = outcome.report
    print(f"{outcome.job_id}: {json.dumps(r['by_state'])}  flags {json.dumps(r['by_flag'])}  "
          f"{r['usage']['prompt_tokens'] + r['usage']['completion_tokens']:,} tokens  ${r['usage']['cost_usd']:.4f}")
    if r["input_errors"]["count"]:
        first = r["input_errors"]["errors"][:3]
        print(f"  {r['input_errors']['count']} bad input lines, e.g. "
              + "; ".join(f"line {e['line']}: {e['error']}" for e in first), file=sys.stderr)
    if r["by_state"].get("stopped"):
        print(f"  stopped by budget: {r['by_state']['stopped']} items left; raise the budget in the job file "
              "and run (or submit) it again to resume", file=sys.stderr)
    if r.get("simulated"):
        print("  answered by a simulator, a stand-in, not a model: every draft says \"simulated\": true",
              file=sys.stderr)
    print(f"  outputs in {outcome.out_dir}")


async def _with_progress(coro_factory, quiet: bool):
    """Run a job coroutine, drawing progress for whichever job is running."""
    from .progress import show

    shown: list[asyncio.Task] = []

    def on_start(runner) -> None:
        for task in shown:
            task.cancel()
        if not quiet:
            shown.append(asyncio.create_task(show(runner)))

    try:
        return await coro_factory(on_start)
    finally:
        for task in shown:
            task.cancel()
        await asyncio.gather(*shown, return_exceptions=True)


@contextlib.asynccontextmanager
async def _maybe_simulator(enabled: bool):
    if not enabled:
        yield None
        return
    from .simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(latency_s=0.05, jitter_s=0.03))
    url = await sim.start()
    print(f"using the built-in simulator at {url}: a stand-in for an LLM endpoint, its labels are "
          "not a model's", file=sys.stderr)
    try:
        yield url
    finally:
        await sim.stop()


def _install_sigterm() -> None:
    # SIGTERM (docker stop, kill) unwinds like Ctrl-C: finished work is committed, leases handed back.
    task = asyncio.current_task()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def cmd_run(args) -> int:
    from .runs import reclaim_dead, run_job
    from .owners import worker_id

    # A bad job file stops here; so does an endpoint not allowed, unless the simulator answers instead.
    prepared = prepare(args.job, input_path=args.input, out_dir=args.out, allowed=None if args.simulate else _allowed())
    store = open_store(args.db)
    try:
        sub = submit(store, args.job, input_path=args.input, out_dir=args.out, new=args.new, prepared=prepared,
                     endpoint=_endpoint(args.simulate))
        print(f"job {sub.job_id}: {sub.items:,} items" + (" (resumed)" if not sub.created else ""), file=sys.stderr)

        async def go():
            _install_sigterm()
            async with _maybe_simulator(args.simulate) as sim_url:
                endpoint = Endpoint("sk-simulator", sim_url, override=True, simulated=True) if sim_url else _endpoint()
                reclaim_dead(store)
                return await _with_progress(
                    lambda on_start: run_job(store, sub.job_id, endpoint, Engine(), worker_id(), on_start),
                    args.quiet)

        outcome = asyncio.run(go())
        _say(outcome)
        return outcome.exit_code
    finally:
        store.close()


def cmd_submit(args) -> int:
    prepared = prepare(args.job, input_path=args.input, out_dir=args.out, allowed=_allowed())
    store = open_store(args.db)
    try:
        sub = submit(store, args.job, input_path=args.input, out_dir=args.out, new=args.new, prepared=prepared,
                     endpoint=_endpoint())
    finally:
        store.close()
    state = "queued" if sub.created else f"already queued ({sub.resumed} items resumed)"
    print(sub.job_id)
    print(f"{state}: {sub.items:,} items, {sub.input_errors} bad input lines", file=sys.stderr)
    return EXIT_OK


def cmd_work(args) -> int:
    from .runs import drain
    from .owners import worker_id

    store = open_store(args.db)
    try:
        async def go():
            _install_sigterm()
            codes = [EXIT_OK]
            while True:
                if args.spool:
                    for entry in submit_spool(store, args.spool, _endpoint(), _allowed()):
                        if entry.error:
                            print(f"spool: {redact(entry.error)}", file=sys.stderr)
                            codes.append(EXIT_JOB_ERROR)
                        else:
                            print(f"spool: {entry.path.name} -> {entry.job_id}", file=sys.stderr)
                outcomes = await _with_progress(
                    lambda on_start: drain(store, _endpoint(), Engine(), worker_id(), on_start, _say), args.quiet)
                codes += [o.exit_code for o in outcomes]
                if args.once:
                    return max(codes)
                await asyncio.sleep(Engine().poll_s)

        return asyncio.run(go())
    finally:
        store.close()


def cmd_status(args) -> int:
    store = open_store(args.db)
    try:
        jobs = [store.get_job(args.job_id)] if args.job_id else store.list_jobs()
        if args.job_id and jobs[0] is None:
            print(f"no job {args.job_id} in {args.db}", file=sys.stderr)
            return EXIT_JOB_ERROR
        rows = []
        for job in jobs:
            counts = store.counts(job.id)
            rows.append({"job_id": job.id, "status": job.status, "items": sum(counts.values()), **counts,
                         "spent_tokens": job.spent_tokens, "spent_cost_usd": round(job.spent_cost, 6)})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            if not rows:
                print(f"no jobs in {args.db}")
            for row in rows:
                states = "  ".join(f"{s}={row[s]}" for s in ("pending", "leased", "done", "failed", "skipped",
                                                              "stopped") if row.get(s))
                print(f"{row['job_id']:<40} {row['status']:<15} {row['items']:>8,} items  {states}  "
                      f"{row['spent_tokens']:,} tokens ${row['spent_cost_usd']:.4f}")
        return EXIT_OK
    finally:
        store.close()


def cmd_plan(args) -> int:
    spec, task = prepare(args.job, input_path=args.input)
    plan = make_plan(spec, task)
    print(format_plan(plan, spec, args.job))
    return EXIT_OK


def cmd_export(args) -> int:
    store = open_store(args.db)
    try:
        if store.get_job(args.job_id) is None:
            print(f"no job {args.job_id} in {args.db}", file=sys.stderr)
            return EXIT_JOB_ERROR
        report, out_dir = export(store, args.job_id, include_flagged=args.include_flagged,
                                 val_fraction=args.val_fraction)
        print(f"wrote {out_dir}", file=sys.stderr)
        if "openai_finetune" in report:
            ft = report["openai_finetune"]
            sides = [side for side in ("train", "validation") if side in ft]
            print("  " + "; ".join(f"{name}: {ft[side]['examples']:,} examples from {ft[side]['sources']:,} sources"
                                   for name, side in zip(ft["files"], sides)), file=sys.stderr)
            for warning in ft["warnings"]:
                print(f"  warning: {warning}", file=sys.stderr)
        return exit_code_for(report)
    finally:
        store.close()


def cmd_simulate(args) -> int:
    from .simulator import SimConfig, serve
    from .simulator.gaps import Gaps

    gaps = Gaps.llama_cpp_python() if args.like == "llama-cpp-python" else Gaps()
    gaps = Gaps(**{**gaps.__dict__, **{name.replace("-", "_"): True for name in args.gap or ()}})
    serve(SimConfig(latency_s=args.latency_ms / 1000, jitter_s=args.jitter_ms / 1000, rpm=args.rpm, tpm=args.tpm,
                    window=args.window, error_rate=args.error_rate, logprobs=not args.no_logprobs,
                    invalid_rate=args.invalid_rate, seed=args.seed, track_contents=not args.no_tracking,
                    identify=not args.as_real, gaps=gaps),
          host=args.host, port=args.port)
    return EXIT_OK


def cmd_probe(args) -> int:
    from .capabilities import store_key
    from .client import make_client
    from .config import EXIT_UNAVAILABLE, ModelSpec
    from .endpoint import normalise_url
    from .probe import format_rows, probe

    endpoint = _endpoint()
    url = args.base_url or endpoint.base_url
    if args.base_url and (refusal := endpoint.allowlist().refusal(args.base_url)):
        raise JobFileError(refusal, field="--base-url")
    spec = ModelSpec(name=args.model, timeout_s=args.timeout)

    async def go():
        client = make_client(spec, api_key=endpoint.api_key, base_url=url)
        try:
            return await probe(client, args.model, args.embedding_model)
        finally:
            await client.close()

    try:
        caps, rows = asyncio.run(go())
    except ConnectionError as e:
        print(f"prelabel: error: {redact(str(e))}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    identity = normalise_url(url)
    if args.json:
        print(json.dumps({"endpoint": identity, "model": args.model, "capabilities": caps.to_json(),
                          "rows": [{"capability": r.capability, "value": r.value, "detail": r.detail}
                                   for r in rows]}, indent=2))
    else:
        print(f"{identity}  model {args.model}")
        print(format_rows(rows))
    store = open_store(args.db)  # the next run against it starts with what was learned
    try:
        store.cache_put([(store_key(identity, args.model), caps.to_json())])
    finally:
        store.close()
    return EXIT_OK


def _fraction(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        f = -1.0
    if not 0 <= f < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number in [0, 1)")
    return f


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prelabel", description="LLM-drafted labels for people to review.")
    parser.add_argument("--version", action="version", version=f"prelabel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log retries and decisions")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", default=default_db(), help="the store: a SQLite path (default: $PRELABEL_DB or "
                                                          "~/.local/share/prelabel/prelabel.db)")
        p.set_defaults(func=func)
        return p

    p = command("run", cmd_run, "submit a job file and run it now, with progress; writes its outputs")
    p.add_argument("job", type=Path)
    p.add_argument("--input", type=Path, help="override input.path")
    p.add_argument("--out", type=Path, help="override output.dir")
    p.add_argument("--new", action="store_true", help="a new job even if the same one was run before")
    p.add_argument("--simulate", action="store_true", help="answer with the built-in simulator (a stand-in)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")

    p = command("submit", cmd_submit, "queue a job file; prints the job id (the same file and input: the same id)")
    p.add_argument("job", type=Path)
    p.add_argument("--input", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--new", action="store_true")

    p = command("work", cmd_work, "run queued jobs; with --once, drain the queue and exit (for cron)")
    p.add_argument("--once", action="store_true", help="exit when no job has work left")
    p.add_argument("--spool", type=Path, help="first submit each new *.yaml in this folder")
    p.add_argument("-q", "--quiet", action="store_true")

    p = command("status", cmd_status, "per-job counts")
    p.add_argument("job_id", nargs="?")
    p.add_argument("--json", action="store_true")

    p = command("plan", cmd_plan, "items, tokens and cost of a job, offline, without calling the LLM")
    p.add_argument("job", type=Path)
    p.add_argument("--input", type=Path)

    p = command("export", cmd_export, "write a job's outputs again from the store")
    p.add_argument("job_id")
    p.add_argument("--include-flagged", action=argparse.BooleanOptionalAction, default=None,
                   help="openai_finetune: drafts flagged for review go in too (overrides output.include_flagged)")
    p.add_argument("--val-fraction", type=_fraction, metavar="F",
                   help="openai_finetune: share of source items held out for validation, 0 <= F < 1 "
                        "(overrides output.val_fraction)")

    p = command("probe", cmd_probe, "what an endpoint and model can do (structured output, logprobs, n, "
                                    "embeddings, usage), asked with a few tiny requests")
    p.add_argument("--base-url", help="default: $OPENAI_BASE_URL (an allowed endpoint, as for a job)")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--embedding-model", help="default: --model")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per probe request")
    p.add_argument("--json", action="store_true")

    p = command("simulate", cmd_simulate, "serve the OpenAI-compatible simulator (a stand-in for tests and demos)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--rpm", type=int, help="requests per minute before 429s")
    p.add_argument("--tpm", type=int, help="tokens per minute before 429s")
    p.add_argument("--window", choices=["second", "minute"], default="second",
                   help="enforce the limits per rolling second (as OpenAI does) or per minute")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered with a 5xx")
    p.add_argument("--invalid-rate", type=float, default=0.0, help="share of answers that break the schema")
    p.add_argument("--no-logprobs", action="store_true")
    p.add_argument("--no-tracking", action="store_true", help="do not count requests per prompt (long benchmarks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--as-real", action="store_true",
                   help="do not say it is a simulator (tests: a stand-in for a real endpoint)")
    p.add_argument("--like", choices=["llama-cpp-python"], help="lack what that server lacks")
    p.add_argument("--gap", action="append", choices=["refuse-json-schema", "ignore-n", "logprobs-need-top",
                                                      "pre-constraint-logprobs", "no-usage", "no-embeddings"],
                   help="lack one capability (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    add_secret(os.environ.get("OPENAI_API_KEY"))
    for handler in logging.getLogger().handlers:  # on the handlers: a logger's filter misses its children
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    try:
        return args.func(args)
    except JobFileError as e:
        print(f"prelabel: error: {redact(str(e))}", file=sys.stderr)
        return EXIT_JOB_ERROR
    except PrelabelError as e:
        print(f"prelabel: error: {redact(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("prelabel: interrupted; finished work is saved, run the same command to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
