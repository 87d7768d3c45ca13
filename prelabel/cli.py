"""The command line: the only place that reads the environment, configures logging and exits."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .llm.allowlist import ALLOWLIST_ENV, AllowList
from .llm.endpoint import Endpoint
from .errors import JobFileError, PrelabelError, StorageError, UsageError
from .redact import RedactingFilter, add_secret, redact
from .states import ITEM_STATES, JobStatus

# Each command imports what it uses when it runs: `--help` loads neither pydantic (the job-file
# schema) nor the store, `status` no job-file reader, and only `run` and `work` the LLM stack (the
# SDK, the tokenizer, the worker).

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
        raise UsageError(f"{ALLOWLIST_ENV}: {e}") from None
    return AllowList(tuple(dict.fromkeys(allowed.prefixes + extra.prefixes)))


def _open_store(db: str):
    """The store, waiting ``$PRELABEL_BUSY_TIMEOUT_S`` (default 30) for another process's lock."""
    from .config import STORE_BUSY_TIMEOUT_S
    from .store import open_store

    raw = os.environ.get("PRELABEL_BUSY_TIMEOUT_S")
    try:
        timeout = float(raw) if raw else STORE_BUSY_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not timeout >= 0:
        raise UsageError(f"PRELABEL_BUSY_TIMEOUT_S={raw!r}: give the seconds to wait for the store's lock, e.g. 30")
    return open_store(db, timeout)  # --db is checked there: a mistyped URL is refused, not a new SQLite file


def _settings():
    """The engine settings; ``$PRELABEL_LEASE_S`` sets how long a lease lasts (a dead host's items are
    taken over after it), the heartbeat renewing it three times a lease, at most every 30 s."""
    from .config import EngineSettings

    raw = os.environ.get("PRELABEL_LEASE_S")
    if not raw:
        return EngineSettings()
    try:
        lease_s = float(raw)
    except ValueError:
        lease_s = -1.0
    if not lease_s >= 3:
        raise UsageError(f"PRELABEL_LEASE_S={raw!r}: give the seconds a lease lasts, at least 3, e.g. 300")
    return EngineSettings(lease_s=lease_s, heartbeat_s=min(EngineSettings().heartbeat_s, lease_s / 3))


def _known_roots(args) -> list[Path] | None:
    """The output roots the operator named (--output-root, $PRELABEL_OUTPUT_ROOT), None if neither."""
    if getattr(args, "output_root", None):
        return args.output_root
    if os.environ.get("PRELABEL_OUTPUT_ROOT"):
        return [Path(p) for p in os.environ["PRELABEL_OUTPUT_ROOT"].split(os.pathsep) if p]
    return None


def _output_roots(args) -> list[Path]:
    """Where jobs run by `work` may write: --output-root, else $PRELABEL_OUTPUT_ROOT (several joined
    by ':'), else the folder of the database (a SQLite file's; a PostgreSQL URL has none) and the spool folder."""
    if (named := _known_roots(args)) is not None:
        return named
    from .store import database, is_postgres

    db = [] if is_postgres(database(args.db)) else [Path(args.db).expanduser().absolute().parent]
    spool = getattr(args, "spool", None)
    return db + ([spool.absolute()] if spool else [])


def _plural(n: int, noun: str) -> str:
    """``1 bad input line``, ``2 bad input lines``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# What a missing key's message offers besides a key, per command.
NO_KEY_HINTS = {"run": ", or run it with --simulate (the built-in stand-in, not a model)",
                "work": " (for cron: on the crontab line, e.g. OPENAI_API_KEY=sk-... before the command)"}


def _endpoint(simulate: bool = False, command: str = "") -> Endpoint:
    if simulate:  # the built-in simulator's URL is known once it starts; its identity before
        return Endpoint("sk-simulator", None, override=True, simulated=True)
    # An empty variable is unset (compose and shells pass `VAR=` for "not configured"): an empty
    # base_url would send every request to nowhere.
    return Endpoint(api_key=os.environ.get("OPENAI_API_KEY") or None,
                    base_url=os.environ.get("OPENAI_BASE_URL") or None, allowed=_allowed(),
                    no_key_hint=NO_KEY_HINTS.get(command, ""))


def _say(outcome) -> None:
    if outcome.batches is not None:
        _say_batches(outcome)
        if outcome.report is None:
            return
    if outcome.note is not None:
        print(f"{outcome.job_id}: not run: {outcome.note}", file=sys.stderr)
        return
    if outcome.report is None:
        print(f"{outcome.job_id}: this worker's share is done; another worker is finishing the job{_elsewhere(outcome)}")
        return
    if "error" in outcome.report:
        print(f"{outcome.job_id}: error: {redact(outcome.report['error'])}", file=sys.stderr)
        if outcome.out_dir is not None:
            print(f"  what finished is written to {outcome.out_dir}", file=sys.stderr)
        return
    r = outcome.report
    variants = (f"  {r['variants']:,} variants (augmentation units {json.dumps(r['augmentation_units'])})"
                if "variants" in r else "")
    print(f"{outcome.job_id}: {r['items']:,} items {json.dumps(r['by_state'])}{variants}  flags {json.dumps(r['by_flag'])}  "
          f"{r['usage']['prompt_tokens'] + r['usage']['completion_tokens']:,} tokens  ${r['usage']['cost_usd']:.4f}")
    if r["input_errors"]["count"]:
        first = r["input_errors"]["errors"][:3]
        print(f"  {_plural(r['input_errors']['count'], 'bad input line')}, e.g. "
              + "; ".join(f"line {e['line']}: {e['error']}" for e in first), file=sys.stderr)
    if stopped := r["budget"]["stopped_items"]:  # augmentation units and re-checks too
        what = "units of work (items, variant re-checks, augmentation)" if "variants" in r else "items"
        print(f"  stopped by budget: {stopped} {what} left; raise the budget in the job file "
              "and run (or submit) it again to resume", file=sys.stderr)
    if (r.get("augmentation") or {}).get("none_made"):
        print(f"  augmentation: {r['augmentation']['none_made']}", file=sys.stderr)
    if r.get("simulated"):
        print("  answered by a simulator, a stand-in, not a model: every draft says \"simulated\": true",
              file=sys.stderr)
    print(f"  outputs in {outcome.out_dir}")


def _say_ended(job) -> None:
    """A job this worker left to others, ended by them (``work`` polling)."""
    if job.status == JobStatus.CANCELLED:
        print(f"{job.id}: cancelled (`prelabel cancel`)")
        return
    how = "done" if job.status == JobStatus.DONE else "stopped by a budget cap"
    print(f"{job.id}: {how}: another worker finished the job and wrote its outputs to {job.spec['output']['dir']} "
          f"on its host (`prelabel export {job.id}` writes them here)")


def _utc(t: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(t))


def _comeback(worker, gone: bool) -> str:
    """When the items of a worker that stopped beating go back to the queue (``status``)."""
    if gone:
        return "its process is gone; the next `prelabel work` on this host takes its items at once"
    if worker.leases_end is None or worker.leases_end <= time.time():
        lapsed = "" if worker.leases_end is None else f" at {_utc(worker.leases_end)}"
        return f"its leases lapsed{lapsed}; the next `prelabel work` takes its items"
    return (f"its leases lapse by {_utc(worker.leases_end)} unless renewed, then the next `prelabel work` "
            "takes its items")


def _elsewhere(outcome) -> str:
    """Where the rest of a job is: leased to workers that write the outputs when they finish, or,
    if they stopped, back in the queue when their leases lapse (the next run takes them then)."""
    leased, until = outcome.elsewhere or (0, None)
    if not leased or until is None:
        return ""
    return (f" ({_plural(leased, 'item')} leased to other workers; if those stopped, the items go back to the "
            f"queue when their leases lapse, by {_utc(until)} unless renewed, and the next `prelabel work` takes them)")


# What became of the lines a batch did not answer, by how it ended (``prelabel.batch.results.failed_lines``).
_BATCH_ENDED = {
    "expired": "its lines not answered go in a later batch",
    "failed": "refused by the provider; its lines go in a later batch, up to batch.max_attempts, then their items fail",
    "cancelled": "cancelled at the provider: the lines it answered are kept, the rest are not sent again (their "
                 "items fail; submit the job again to send them)",
}


def _say_batches(outcome) -> None:
    """A batch job's tick: what it sent and collected, and whether batches are still in flight."""
    r = outcome.batches.report
    if outcome.batches.busy:
        print(f"{outcome.job_id}: batches: another tick ({outcome.batches.busy}) has them now; left to it",
              file=sys.stderr)
        return
    print(f"{outcome.job_id}: batches: {len(r.submitted)} created, {len(r.collected)} collected "
          f"({r.lines_answered:,} lines answered, {r.lines_failed:,} failed), {r.in_flight} in flight; "
          f"{r.committed:,} items committed", file=sys.stderr)
    for line in r.partial:
        print(f"  batch chunk {line}: {_BATCH_ENDED[line.split(': ', 1)[1].split(' ', 1)[0]]}", file=sys.stderr)
    for batch_id in r.orphans:
        print(f"  batch {batch_id} has this job's metadata but no chunk of it: not collected (check it at "
              "the provider)", file=sys.stderr)
    if outcome.report is None:
        print(f"  waiting on batches: run `prelabel work --once` again later (cron), or "
              f"`prelabel status {outcome.job_id}`", file=sys.stderr)


def _batch_checkpoint():
    """The fault tests' kill hook: $PRELABEL_BATCH_KILL_AT names a step of a batch tick (intent,
    upload, create, download, read, dedupe, live, commit: ``prelabel.batch.executor``) at which this process kills itself, as kill -9 would."""
    step = os.environ.get("PRELABEL_BATCH_KILL_AT")
    if not step:
        return None

    def checkpoint(at: str) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return checkpoint


def _tick_code(codes: list[int]) -> int:
    """A tick's exit: the worst failure, else "waiting on batches", else 0."""
    from .config import EXIT_BATCHES_WAITING

    failures = [c for c in codes if c not in (0, EXIT_BATCHES_WAITING)]
    return max(failures) if failures else max(codes)


async def _with_progress(coro_factory, quiet: bool):
    """Run a job coroutine, drawing progress for whichever job is running."""
    from .worker.progress import show

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
    from .queue.submit import prepare
    from .worker.coordinator import StoreCoordinator
    from .worker.runs import reclaim_dead, run_job
    from .store.owners import worker_id

    # A bad job file stops here; so does an endpoint not allowed, unless the simulator answers instead.
    endpoint = _endpoint(args.simulate, "run")
    prepared = prepare(args.job, input_path=args.input, out_dir=args.out, allowed=endpoint.allowlist(),
                       batch=args.batch)
    store = _open_store(args.db)
    try:
        store.verify()  # a damaged store is found before a request is paid for, not when its pages are reached
        sub = _submit_waiting(store, args, prepared, endpoint)
        print(f"job {sub.job_id}: {sub.items:,} items" + (" (resumed)" if not sub.created else ""), file=sys.stderr)

        async def go():
            _install_sigterm()
            async with _maybe_simulator(args.simulate) as sim_url:
                answering = Endpoint("sk-simulator", sim_url, override=True, simulated=True) if sim_url else endpoint
                reclaim_dead(store)
                if prepared[0].model.mode == "batch":
                    return await _run_batches(store, sub.job_id, answering, prepared[0], args.quiet)
                return await _with_progress(
                    lambda on_start: run_job(store, sub.job_id, answering, _settings(), worker_id(), on_start,
                                             coordinator=StoreCoordinator(store)),
                    args.quiet)

        outcome = asyncio.run(go())
        _say(outcome)
        return outcome.exit_code
    finally:
        store.close()




async def _run_batches(store, job_id: str, endpoint, spec, quiet: bool):
    """`run` of a batch job: ticks until no batch is in flight, polling every batch.poll_interval_s
    with a progress line. Interrupted, it is run again (or ticked by `work --once`) from the store."""
    from .batch.executor import progress_line
    from .config import EXIT_BATCHES_WAITING
    from .store.owners import worker_id
    from .worker.runs import run_job

    started, wait, shown = time.time(), 1.0, False
    try:
        while True:
            outcome = await run_job(store, job_id, endpoint, _settings(), worker_id(),
                                    batch_checkpoint=_batch_checkpoint())
            if outcome.exit_code != EXIT_BATCHES_WAITING:
                return outcome
            if not quiet:
                print(f"\r{job_id}: {progress_line(store.batch_chunks(job_id), time.time())}; "
                      f"waited {int(time.time() - started)}s", end="", file=sys.stderr, flush=True)
                shown = True
            # Soon after a submit (a batch may finish in seconds), then every batch.poll_interval_s.
            await asyncio.sleep(wait)
            wait = min(2 * wait, spec.batch.poll_interval_s)
    finally:
        if shown:
            print(file=sys.stderr)


def _submit_waiting(store, args, prepared, endpoint):
    """Submit; while another live process is loading the same job, wait for it (or take over when
    it dies), so that `run` never starts a job whose input is not all in."""
    from .config import LOADING_POLL_S
    from .queue.submit import submit

    told = False
    while True:
        sub = submit(store, args.job, input_path=args.input, out_dir=args.out, new=args.new, prepared=prepared,
                     endpoint=endpoint)
        if sub.read_on_from is not None:
            print(f"job {sub.job_id}: its earlier load was cut off; read the input on after line "
                  f"{sub.read_on_from:,}", file=sys.stderr)
        if sub.loading is None:
            return sub
        if not told:
            print(f"job {sub.job_id}: another process ({sub.loading}) is loading its input; waiting for it",
                  file=sys.stderr)
            told = True
        time.sleep(LOADING_POLL_S)


def cmd_submit(args) -> int:
    from .config import EXIT_OK
    from .outputs.root import confine, within
    from .queue.submit import prepare, submit

    endpoint = _endpoint()
    prepared = prepare(args.job, input_path=args.input, out_dir=args.out, allowed=endpoint.allowlist(),
                       batch=args.batch)
    # A job `work` would hold (outside its output root) is refused now where the roots are known;
    # otherwise the worker's default is all there is to go by, and a warning says so.
    out_dir = prepared[0].output.dir
    if (roots := _known_roots(args)) is not None:
        confine(out_dir, roots, str(args.job))
    elif not within(out_dir, defaults := _output_roots(args)):
        where = (f"the database's folder ({defaults[0]})" if defaults else
                 "no folder: a database URL has none to default to")
        print(f"prelabel: warning: {args.job}: output.dir {out_dir} is outside what a worker writes to by "
              f"default ({where}); start `prelabel work` with --output-root (or PRELABEL_OUTPUT_ROOT) naming a "
              "folder that holds it, or the worker holds the job (`prelabel status` says why)", file=sys.stderr)
    store = _open_store(args.db)
    try:
        sub = submit(store, args.job, input_path=args.input, out_dir=args.out, new=args.new, prepared=prepared,
                     endpoint=endpoint)
    finally:
        store.close()
    state = "queued" if sub.created else f"already queued ({sub.resumed} items resumed)"
    if sub.loading:
        state = f"being loaded by another process ({sub.loading}); it queues the job when done"
    elif sub.read_on_from is not None:
        state = f"queued (its earlier load was cut off: read on after line {sub.read_on_from:,})"
    print(sub.job_id)
    print(f"{state}: {sub.items:,} items, {_plural(sub.input_errors, 'bad input line')}", file=sys.stderr)
    return EXIT_OK


def cmd_work(args) -> int:
    from .config import EXIT_JOB_ERROR, EXIT_OK
    from .queue.submit import submit_spool
    from .worker.coordinator import StoreCoordinator
    from .worker.notices import Notices
    from .worker.runs import drain
    from .store.owners import worker_id

    roots = _output_roots(args)
    endpoint = _endpoint(command="work")  # the environment is read once, not every tick
    store = _open_store(args.db)
    coordinator = StoreCoordinator(store)  # the rate limit is shared with every worker of this store
    settings = _settings()
    notices = Notices()  # a poll says of a job only what the last did not

    def say(outcome) -> None:
        if notices.fresh(outcome):
            _say(outcome)

    try:
        async def go():
            _install_sigterm()
            codes = [EXIT_OK]
            while True:
                if args.spool:
                    for entry in submit_spool(store, args.spool, endpoint, endpoint.allowlist(), roots):
                        if entry.error:
                            print(f"spool: {redact(entry.error)}", file=sys.stderr)
                            codes.append(EXIT_JOB_ERROR)
                        elif entry.loading:
                            print(f"spool: {entry.path.name}: another process ({entry.loading}) is loading it",
                                  file=sys.stderr)
                        else:
                            print(f"spool: {entry.path.name} -> {entry.job_id}", file=sys.stderr)
                outcomes = await _with_progress(
                    lambda on_start: drain(store, endpoint, settings, worker_id(), on_start, say, roots,
                                           coordinator=coordinator, batch_checkpoint=_batch_checkpoint()), args.quiet)
                codes += [o.exit_code for o in outcomes]
                if args.once:
                    return _tick_code(codes)
                for job in notices.ended(store):
                    _say_ended(job)
                await asyncio.sleep(settings.poll_s)

        return asyncio.run(go())
    finally:
        store.close()


def cmd_cancel(args) -> int:
    from .config import EXIT_JOB_ERROR, EXIT_OK

    store = _open_store(args.db)
    try:
        job = store.get_job(args.job_id)
        if job is None:
            print(f"no job {args.job_id} in {args.db}", file=sys.stderr)
            return EXIT_JOB_ERROR
        if job.status == JobStatus.INGESTING:
            print(f"job {args.job_id} is still being loaded; cancel it once its input is in", file=sys.stderr)
            return EXIT_JOB_ERROR
        stopped = store.cancel(args.job_id)
    finally:
        store.close()
    print(f"{args.job_id}: cancelled, {_plural(stopped, 'waiting item')} stopped (items a worker holds now are "
          "finished); `prelabel submit` of its job file queues it again", file=sys.stderr)
    return EXIT_OK


def cmd_status(args) -> int:
    from dataclasses import replace

    from .config import EXIT_JOB_ERROR, EXIT_OK, EngineSettings
    from .outputs.report import work_counts
    from .queue.ingest import reader_is_dead
    from .store.batches import COLLECTED
    from .store.owners import dead_local_owners

    store = _open_store(args.db)
    try:
        store.verify()  # a damaged store says so here, not with counts read from what is left of it
        jobs = [store.get_job(args.job_id)] if args.job_id else store.list_jobs()
        if args.job_id and jobs[0] is None:
            print(f"no job {args.job_id} in {args.db}", file=sys.stderr)
            return EXIT_JOB_ERROR
        rows = []
        for job in jobs:
            work = work_counts(store, job.id)  # input items; variants and augmentation units apart
            counts = work["by_state"]
            rows.append({"job_id": job.id, "status": job.status, "items": sum(counts.values()), **counts,
                         **({"variants": work["variants"], "augmentation_units": work["augmentation_units"]}
                            if "variants" in work else {}),
                         "spent_tokens": job.spent_tokens, "spent_cost_usd": round(job.spent_cost, 6)})
            chunks = store.batch_chunks(job.id)
            if chunks:  # a batch job's batches, as the provider last reported them
                rows[-1]["batches"] = [{"chunk": c.chunk, "batch_id": c.batch_id, "stage": c.stage,
                                        "status": c.status, "requests": c.requests, "completed": c.completed,
                                        "failed": c.failed, "created": c.created, "expires": c.expires,
                                        "errors": c.errors}
                                       for c in chunks]
            loading = store.ingest_state(job.id) if job.status == JobStatus.INGESTING else None
            if loading is not None:  # how far its input is in, and whether anyone is still reading it
                rows[-1]["loading"] = {"line": loading.line, "loader": loading.owner,
                                       "alive": not reader_is_dead(loading, time.time())}
        # Spool files whose latest try failed, while they are still there to fix.
        failed = [] if args.job_id else [f for f in store.spool_failures() if Path(f.path).exists()]
        # The live workers, then those holding leases without beating (stopped, dead, cut off): what
        # no live worker can take until their leases lapse. A worker of this host whose process is
        # gone is not live, whatever its last beat says, and its items are taken at once.
        stale_s = EngineSettings().share_stale_s
        beating = store.live_workers(stale_s)
        listed = {w.worker for w in beating}  # one that went stale between the two queries is listed once
        silent = [w for w in store.silent_workers(stale_s) if w.worker not in listed]
        dead = set(dead_local_owners([w.worker for w in beating + silent]))
        workers = [w for w in beating if w.worker not in dead] + \
                  [replace(w, live=False) for w in beating if w.worker in dead and w.leased] + silent
        workers = [w for w in workers if not args.job_id or w.job_id == args.job_id]
        holds = store.holds()
        for row in rows:
            if row["status"] == JobStatus.HELD and row["job_id"] in holds:
                row["held"] = holds[row["job_id"]]
        if args.json:  # an object: room for more than jobs
            print(json.dumps({"jobs": rows,
                              "spool_failures": [{"path": f.path, "error": f.error} for f in failed],
                              "workers": [{"host": w.host, "pid": w.pid, "worker": w.worker, "job_id": w.job_id,
                                           "items_leased": w.leased, "last_heartbeat_s_ago": w.age_s,
                                           "live": w.live, "process_gone": w.worker in dead,
                                           "leases_end": None if w.leases_end is None else round(w.leases_end, 3)}
                                          for w in workers]}, indent=2))
            return EXIT_OK
        if not rows:
            print(f"no jobs in {args.db}")
        for row in rows:
            states = "  ".join(f"{s}={row[s]}" for s in ITEM_STATES if row.get(s))
            variants = ""
            if "variants" in row:
                units = "  ".join(f"{s}={n}" for s, n in row["augmentation_units"].items())
                variants = f"{row['variants']:,} variants (augmentation units: {units})  "
            batches = row.get("batches", ())
            in_flight = [b for b in batches if b["stage"] != COLLECTED]
            # A batch job's items wait at the provider: "in batches", not "queued" with nothing moving.
            status = "in batches" if in_flight and row["status"] in (JobStatus.QUEUED, JobStatus.RUNNING) \
                else row["status"]
            print(f"{row['job_id']:<40} {status:<15} {row['items']:>8,} items  {states}  {variants}"
                  f"{row['spent_tokens']:,} tokens ${row['spent_cost_usd']:.4f}")
            if "held" in row:
                print(f"  held: {row['held']}")
            if batches:
                print(f"  batches: {len(in_flight)} in flight, {len(batches) - len(in_flight)} collected; lines "
                      f"{sum(b['completed'] for b in batches):,} done, {sum(b['failed'] for b in batches):,} failed"
                      + ("" if args.job_id else f" (`prelabel status {row['job_id']}` lists them)"))
            for b in batches if args.job_id else ():  # each batch only for the job asked about
                when = lambda t: time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "-"  # noqa: E731
                print(f"  batch {b['batch_id'] or '(not created)'} chunk {b['chunk']} {b['status'] or b['stage']}: "
                      f"{b['completed']:,}/{b['requests']:,} done, {b['failed']:,} failed; created "
                      f"{when(b['created'])} UTC, expires {when(b['expires'])} UTC")
                if b["status"] in ("failed", "cancelled", "expired"):  # what became of the lines it did not answer
                    print(f"    {_BATCH_ENDED[b['status']]}" + (f"; the provider said: {b['errors']}" if b["errors"] else ""))
            if "loading" in row and not row["loading"]["alive"]:
                print(f"  its loader is gone after line {row['loading']['line']:,}: the next submit, run "
                      "or work tick reads the input on from there")
        live = [w for w in workers if w.live]
        if live:
            print(f"{len(live)} live worker{'s' if len(live) != 1 else ''}:")
        for w in live:
            print(f"  {w.host} pid {w.pid}  {w.job_id}  {w.leased:,} items leased  last heartbeat {w.age_s:.0f} s ago")
        if silent := [w for w in workers if not w.live]:
            print(f"{len(silent)} worker{'s' if len(silent) != 1 else ''} not beating (stopped, dead or cut off) "
                  "holding leases:")
        for w in silent:
            beat = "never beat" if w.age_s is None else f"last heartbeat {w.age_s:.0f} s ago"
            print(f"  {w.host} pid {w.pid}  {w.job_id}  {w.leased:,} items leased  {beat}  "
                  f"not beating: {_comeback(w, w.worker in dead)}")
        for entry in failed:
            print(f"spool file failed: {entry.error} (tried again when it, or a file it names, changes)")
        return EXIT_OK
    finally:
        store.close()


def cmd_plan(args) -> int:
    from .config import EXIT_OK
    from .queue.plan import format_plan, make_plan
    from .queue.submit import prepare

    spec, task = prepare(args.job, input_path=args.input)
    plan = make_plan(spec, task)
    print(format_plan(plan, spec, args.job))
    return EXIT_OK


def cmd_export(args) -> int:
    from .config import EXIT_JOB_ERROR
    from .outputs.export import exit_code_for, export

    store = _open_store(args.db)
    try:
        job = store.get_job(args.job_id)
        if job is None:
            print(f"no job {args.job_id} in {args.db}", file=sys.stderr)
            return EXIT_JOB_ERROR
        if job.status == JobStatus.INGESTING:  # outputs of a job whose input is not all in would look final
            print(f"job {args.job_id} is still being loaded (its input is not all in): nothing to export yet",
                  file=sys.stderr)
            return EXIT_JOB_ERROR
        report, out_dir = export(store, args.job_id, include_flagged=args.include_flagged,
                                 val_fraction=args.val_fraction, accept_above=args.accept_above)
        print(f"wrote {out_dir}", file=sys.stderr)
        if "reviewed" in report:
            r = report["reviewed"]
            print(f"  {r['drafts']:,} drafts with their reviewers' labels"
                  + (f"; unreviewed drafts accepted at confidence >= {r['accept_above']:.4f}"
                     if r["accept_above"] is not None else ""), file=sys.stderr)
        if "openai_finetune" in report:
            from .outputs.finetune import TRAIN_FILE, VAL_FILE

            ft = report["openai_finetune"]
            names = {"train": TRAIN_FILE, "validation": VAL_FILE}
            print("  " + "; ".join(f"{names[side]}{'' if names[side] in ft['files'] else ' (not written)'}: "
                                   f"{ft[side]['examples']:,} examples from {ft[side]['sources']:,} sources"
                                   for side in names if side in ft), file=sys.stderr)
            for warning in ft["warnings"]:
                print(f"  warning: {warning}", file=sys.stderr)
        elif args.include_flagged is not None or args.val_fraction is not None:
            flags = " and ".join(flag for flag, value in (("--include-flagged", args.include_flagged),
                                                          ("--val-fraction", args.val_fraction)) if value is not None)
            formats = ", ".join(job.spec["output"]["formats"])
            print(f"  warning: {flags} shape the fine-tuning files, and this job's output.formats ({formats}) has "
                  f"no openai_finetune: none was written; add openai_finetune to output.formats and run "
                  f"or export again", file=sys.stderr)
        return exit_code_for(report)
    finally:
        store.close()


def _needs_job(func):
    """A review command on a job the store does not have says so, as `export` does (exit 3)."""
    def run(args) -> int:
        from .config import EXIT_JOB_ERROR

        store = _open_store(args.db)
        try:
            known = store.get_job(args.job_id) is not None
        finally:
            store.close()
        if not known:
            print(f"no job {args.job_id} in {args.db}", file=sys.stderr)
            return EXIT_JOB_ERROR
        return func(args)
    return run


def cmd_review_import(args) -> int:
    from .config import EXIT_OK
    from .feedback.intake import import_reviews

    store = _open_store(args.db)
    try:
        summary = import_reviews(store, args.job_id, args.files)
    finally:
        store.close()
    for f in summary["files"]:
        source = f" from {_plural(f['tasks'], 'Label Studio task')}" if f["tasks"] else ""  # none in a JSONL file
        print(f"{f['file']}: {_plural(f['reviews'], 'review')}{source}; {f['not_fit']} did not fit "
              f"the schema, {f['unknown_ids']} unknown ids, {f['skipped_by_reviewer']} skipped by the reviewer",
              file=sys.stderr)
        for problem in f["problems"]:
            print(f"  skipped: {problem}", file=sys.stderr)
    print(f"{summary['reviews_changed']} reviews new or updated; {summary['reviews_stored']} stored for "
          f"{args.job_id}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    return EXIT_OK


def cmd_review_report(args) -> int:
    from .config import EXIT_OK
    from .feedback import report
    from .feedback.intake import job_spec
    from .job.jobfile import REVIEW_EXAMPLES

    store = _open_store(args.db)
    try:
        r = report.build(store, args.job_id, target_error=args.target_error)
        out_dir = Path(args.out or job_spec(store, args.job_id).output.dir)
        seeds = report.write_examples(store, args.job_id, out_dir / REVIEW_EXAMPLES)
    finally:
        store.close()
    json_path, html_path = report.write(r, out_dir)
    t, u = r["threshold"], r["unreviewed_error"]
    print(f"{r['reviewed']} of {r['drafts']} drafts reviewed; correction rate "
          f"{_share(r['reviews']['correction_rate'])}; ECE {_fmt(r['calibration']['ece'])}, "
          f"Brier {_fmt(r['calibration']['brier'])}")
    if t.get("confidence") is not None:
        print(f"threshold for target error {t['target_error']:g}: confidence >= {t['confidence']:.4f} accepts "
              f"{t['would_accept']} unreviewed drafts ({_share(t['share_of_job'])} of the job), error <= "
              f"{_share(t['error_upper_bound'])} (95%)")
    else:
        print(f"threshold for target error {t['target_error']:g}: none ({t['why']})")
    if u.get("n"):
        print(f"error of the {u['unreviewed_drafts']} unreviewed drafts: {_share(u['rate'])} "
              f"(95% interval {_share(u['interval_95'][0])} to {_share(u['interval_95'][1])}, audit of {u['n']})")
    for pair in r["most_corrected"][:3]:
        print(f"  most corrected: {pair['drafted']} -> {pair['reviewed']} ({_plural(pair['count'], 'time')})")
    print(f"wrote {json_path} and {html_path}" + (f"; {seeds} corrected items in {out_dir / REVIEW_EXAMPLES} "
                                                   f"(task.examples: reviews)" if seeds else ""), file=sys.stderr)
    return EXIT_OK


def cmd_review_sample(args) -> int:
    from .config import EXIT_OK
    from .feedback.intake import drafts_by_id, job_spec
    from .feedback.sampling import AUDIT, draw
    from .outputs.labelstudio import write_labelstudio
    from .outputs.report import build_report, model_version

    store = _open_store(args.db)
    try:
        spec = job_spec(store, args.job_id)
        reviewed = {r.draft_id for r in store.reviews(args.job_id)}
        drawn = draw(store.iter_records(args.job_id), reviewed, args.size, args.audit, seed=args.seed)
        out = args.out or Path(spec.output.dir) / "review_sample.json"
        purpose = dict(drawn)
        records = drafts_by_id(store, args.job_id, only=set(purpose))
        counts = write_labelstudio((records[d] for d, _ in drawn), out.parent, spec.task,
                                   # the export's: Label Studio shows predictions of one model_version
                                   model_version(build_report(store, args.job_id)), tasks_file=out.name,
                                   extra_data=lambda r: {"review_sample": purpose[r["id"]]})
        store.add_samples(args.job_id, purpose.items())
    finally:
        store.close()
    audited = sum(why == AUDIT for why in purpose.values())
    print(f"wrote {out}: {counts['tasks']} tasks, {counts['tasks'] - audited} most informative and {audited} "
          f"uniform audit (data.review_sample says which); import it into the job's Label Studio project",
          file=sys.stderr)
    return EXIT_OK


def cmd_review_examples(args) -> int:
    from .config import EXIT_JOB_ERROR, EXIT_OK
    from .feedback.intake import job_spec
    from .feedback.report import write_examples
    from .job.jobfile import REVIEW_EXAMPLES

    store = _open_store(args.db)
    try:
        out = args.out or Path(job_spec(store, args.job_id).output.dir) / REVIEW_EXAMPLES
        n = write_examples(store, args.job_id, out, corrected_only=not args.all)
    finally:
        store.close()
    if not n:
        print(f"no {'reviewed' if args.all else 'corrected'} items yet: nothing written", file=sys.stderr)
        return EXIT_JOB_ERROR
    print(f"wrote {out}: {n} examples, for task.examples in the next round's job file", file=sys.stderr)
    return EXIT_OK


def _share(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def cmd_simulate(args) -> int:
    from .config import EXIT_OK
    from .simulator import SimConfig
    from .simulator import serve as _serve
    from .simulator.batches import BatchConfig
    from .simulator.gaps import PROFILES, Gaps

    gaps = PROFILES[args.like] if args.like else Gaps()
    gaps = Gaps(**{**gaps.__dict__, **{name.replace("-", "_"): True for name in args.gap or ()}})
    try:
        _serve(SimConfig(latency_s=args.latency_ms / 1000, jitter_s=args.jitter_ms / 1000, rpm=args.rpm, tpm=args.tpm,
                    window=args.window, style=args.style, capacity=args.capacity, queue_limit=args.queue_limit,
                    error_rate=args.error_rate, logprobs=not args.no_logprobs,
                    invalid_rate=args.invalid_rate, seed=args.seed, track_contents=not args.no_tracking,
                    identify=not args.as_real, gaps=gaps,
                    batch=BatchConfig(**{name: value for name, value in (
                        ("delay_s", args.batch_delay_s), ("line_error_rate", args.batch_error_rate),
                        ("shuffle", args.batch_shuffle), ("expire_first", args.batch_expire_first),
                        ("expire_share", args.batch_expire_share), ("cancel_first", args.batch_cancel_first),
                        ("cancel_share", args.batch_cancel_share), ("max_file_bytes", args.batch_max_file_bytes),
                        ("max_requests", args.batch_max_requests)) if value is not None})),
               host=args.host, port=args.port)
    except OSError as e:  # the port is taken, or the host is not this machine's
        raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e}); "
                         f"choose another port") from None
    return EXIT_OK


def cmd_probe(args) -> int:
    from types import SimpleNamespace

    from .llm.capabilities import store_key
    from .llm.client import make_client
    from .config import EXIT_OK, EXIT_UNAVAILABLE, ModelSpec
    from .llm.endpoint import normalise_url
    from .llm.probe import format_rows, probe

    endpoint = _endpoint()
    url = args.base_url or endpoint.base_url
    if args.base_url and (refusal := endpoint.allowlist().refusal(
            args.base_url, named_by="--base-url", command="`prelabel probe`")):
        raise UsageError(f"--base-url: {refusal}")
    spec = ModelSpec(name=args.model, timeout_s=args.timeout)
    # the check `run` makes: OpenAI's API with no key is said at once, not as a connection error
    if (missing := Endpoint(endpoint.api_key, url).missing_key(SimpleNamespace(model=spec))) is not None:
        print(f"prelabel: error: {missing}", file=sys.stderr)
        return EXIT_UNAVAILABLE

    async def go():
        client = make_client(spec, api_key=endpoint.api_key, base_url=url)
        try:
            return await probe(client, args.model, args.embedding_model)
        finally:
            await client.close()

    try:
        caps, rows = asyncio.run(go())
    except ConnectionError as e:
        print(f"prelabel: error: {normalise_url(url)}: {redact(str(e))}; check that the server runs there and "
              f"that {'--base-url' if args.base_url else 'OPENAI_BASE_URL'} names it (scheme, host, port, /v1), "
              "then probe again", file=sys.stderr)
        return EXIT_UNAVAILABLE
    identity = normalise_url(url)
    if args.json:
        print(json.dumps({"endpoint": identity, "model": args.model, "capabilities": caps.to_json(),
                          "rows": [{"capability": r.capability, "value": r.value, "detail": r.detail}
                                   for r in rows]}, indent=2))
    else:
        print(f"{identity}  model {args.model}")
        print(format_rows(rows))
    store = _open_store(args.db)  # the next run against it starts with what was learned
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


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of 0 or more")
    return n


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0 to 65535; 0: any free one)")
    return n


def _accept_above(value: str):
    if value == "auto":
        return value
    try:
        f = float(value)
    except ValueError:
        f = -1.0
    if not 0 <= f <= 1:
        raise argparse.ArgumentTypeError(f"{value!r} is neither 'auto' nor a confidence in [0, 1]")
    return f


def _host_id(value: str) -> str:
    from .store.owners import HOST_ID

    if not HOST_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r}: 1-64 letters, digits, '.', '_' or '-', starting with a "
                                         "letter or digit")
    return value


def _host_id_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-id", type=_host_id, default=os.environ.get("PRELABEL_HOST_ID") or None,
                   help="act as this host (default: $PRELABEL_HOST_ID, else the machine's name): processes "
                        "with different host ids on one machine take over each other's leases only when "
                        "they expire, as between machines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prelabel", description="LLM-drafted labels for people to review.")
    parser.add_argument("--version", action="version", version=f"prelabel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log retries and decisions")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", default=default_db(), help="the store: a SQLite path or a postgresql:// URL "
                                                          "(default: $PRELABEL_DB or ~/.local/share/prelabel/prelabel.db)")
        p.set_defaults(func=func)
        return p

    p = command("run", cmd_run, "submit a job file and run it now, with progress; writes its outputs")
    _host_id_option(p)
    p.add_argument("job", type=Path)
    p.add_argument("--input", type=Path, help="override input.path")
    p.add_argument("--out", type=Path, help="override output.dir")
    p.add_argument("--new", action="store_true", help="a new job even if the same one was run before")
    p.add_argument("--simulate", action="store_true", help="answer with the built-in simulator (a stand-in)")
    p.add_argument("--batch", action="store_true", help="through the Batch API (half the price, within 24 h), "
                                                        "as model.mode: batch; waits, polling")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")

    p = command("submit", cmd_submit, "queue a job file; prints the job id (the same file and input: the same id)")
    _host_id_option(p)
    p.add_argument("job", type=Path)
    p.add_argument("--input", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--new", action="store_true")
    p.add_argument("--batch", action="store_true", help="through the Batch API, as model.mode: batch")
    p.add_argument("--output-root", type=Path, action="append", metavar="DIR",
                   help="refuse the job unless its output.dir is under DIR, as `work --output-root DIR` would "
                        "(repeatable; default: $PRELABEL_OUTPUT_ROOT; neither: a warning only)")

    p = command("work", cmd_work, "run queued jobs; with --once, drain the queue and exit (for cron)")
    _host_id_option(p)
    p.add_argument("--once", action="store_true", help="exit when no job has work left")
    p.add_argument("--spool", type=Path, help="first submit each new *.yaml in this folder")
    p.add_argument("--output-root", type=Path, action="append", metavar="DIR",
                   help="jobs may write their outputs only under DIR (repeatable; default: $PRELABEL_OUTPUT_ROOT, "
                        "else the database's folder and the spool folder)")
    p.add_argument("-q", "--quiet", action="store_true")

    p = command("cancel", cmd_cancel, "take a job out of the queue (submitting its job file again resumes it)")
    p.add_argument("job_id")

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
    p.add_argument("--accept-above", type=_accept_above, metavar="C|auto",
                   help="unreviewed drafts below this confidence stay flagged (out of the fine-tuning files); "
                        "auto: the threshold the reviews support for review.target_error")

    review = sub.add_parser("review", help="reviewers' corrections: import them, measure the drafts, "
                                           "choose what to review next")
    review_sub = review.add_subparsers(dest="review_command", required=True)

    def review_command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = review_sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", default=default_db(), help="the store (as for the other commands)")
        p.add_argument("job_id")
        p.set_defaults(func=_needs_job(func))
        return p

    p = review_command("import", cmd_review_import,
                       "read Label Studio JSON exports or JSONL {id, label} corrections into the store")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--json", action="store_true", help="print what was read as JSON")

    p = review_command("report", cmd_review_report,
                       "measure the drafts against the reviews: review.json and review.html")
    p.add_argument("--out", type=Path, help="folder for review.json and review.html (default: output.dir)")
    p.add_argument("--target-error", type=_fraction, metavar="E",
                   help="error allowed among drafts accepted unreviewed (overrides review.target_error)")

    p = review_command("sample", cmd_review_sample,
                       "a Label Studio file of the next drafts to review: the most informative plus a "
                       "uniform audit sample")
    p.add_argument("--size", type=_count, required=True, help="the most informative drafts")
    p.add_argument("--audit", type=_count, default=0, help="drafts drawn uniformly at random, for the error estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="the file (default: output.dir/review_sample.json)")

    p = review_command("examples", cmd_review_examples,
                       "the corrected items as a few-shot examples file (task.examples) for the next round")
    p.add_argument("--all", action="store_true", help="accepted items too, not only corrected ones")
    p.add_argument("--out", type=Path, help="the file (default: output.dir/review_examples.jsonl)")

    p = command("probe", cmd_probe, "what an endpoint and model can do (structured output, logprobs, n, "
                                    "embeddings, usage), asked with a few tiny requests")
    p.add_argument("--base-url", help="default: $OPENAI_BASE_URL (an allowed endpoint, as for a job)")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--embedding-model", help="default: --model")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per probe request")
    p.add_argument("--json", action="store_true")

    p = command("simulate", cmd_simulate, "serve the OpenAI-compatible simulator (a stand-in for tests and demos)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--rpm", type=int, help="requests per minute before 429s")
    p.add_argument("--tpm", type=int, help="tokens per minute before 429s")
    p.add_argument("--window", choices=["second", "minute"], default="second",
                   help="enforce the limits per rolling second (as OpenAI does) or per minute")
    p.add_argument("--style", choices=["openai", "azure", "bucket", "gateway"], default="openai",
                   help="how limits are enforced and reported: openai (rolling window, headers per minute, "
                        "retry-after-ms), azure (quota per minute, reset on the minute), bucket (token bucket, "
                        "1 s of burst), gateway (no rate-limit headers, 429 without retry-after)")
    p.add_argument("--capacity", type=int, help="a self-hosted server: requests served at once (the rest queue)")
    p.add_argument("--queue-limit", type=int, help="with --capacity: 503 past this many requests in flight")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered with a 5xx")
    p.add_argument("--invalid-rate", type=float, default=0.0, help="share of answers that break the schema")
    p.add_argument("--no-logprobs", action="store_true")
    p.add_argument("--no-tracking", action="store_true", help="do not count requests per prompt (long benchmarks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--as-real", action="store_true",
                   help="do not say it is a simulator (tests: a stand-in for a real endpoint)")
    p.add_argument("--like", choices=["llama-cpp-python", "llama-server", "vllm", "ollama", "litellm"],
                   help="lack what that server lacks (llama-cpp-python measured; the others from their docs)")
    p.add_argument("--gap", action="append", choices=["refuse-json-schema", "ignore-n", "logprobs-need-top",
                                                      "pre-constraint-logprobs", "no-usage", "no-embeddings",
                                                      "per-token-embeddings"],
                   help="lack one capability (repeatable)")
    # The Files and Batches endpoints' switches; unset: prelabel.simulator.batches.BatchConfig's defaults.
    p.add_argument("--batch-delay-s", type=float, help="a batch's time to complete (default 0)")
    p.add_argument("--batch-error-rate", type=float, help="share of batch lines answered 500 (in the error file)")
    p.add_argument("--batch-shuffle", action="store_true", default=None, help="batch output lines in a random order")
    p.add_argument("--batch-expire-first", type=int, help="the first N batches expire part-way (their completed lines kept)")
    p.add_argument("--batch-expire-share", type=float, help="share of an expiring batch's lines done before it expires (0.5)")
    p.add_argument("--batch-cancel-first", type=int,
                   help="the next N batches are cancelled part-way, as by an operator in the console")
    p.add_argument("--batch-cancel-share", type=float, help="share of a cancelled batch's lines done first (0.5)")
    p.add_argument("--batch-max-file-bytes", type=int, help="an input file upload past this is refused (200 MB)")
    p.add_argument("--batch-max-requests", type=int,
                   help="a batch whose input file has more lines fails validation")
    return parser


# Each request makes many short-lived objects and few cycles (the SDK's request options, httpx's and
# aiohttp's requests and responses): the youngest generation collected every 10,000 allocations, not
# 700, takes the collector from 0.4 to 0.05 CPU s of a 10,000-item run (bench/RESULTS.md).
GC_THRESHOLD = (10_000, 10, 10)
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command that died of SIGPIPE


def main(argv: list[str] | None = None) -> int:
    gc.set_threshold(*GC_THRESHOLD)  # the process's, so set here, where the process is configured
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    add_secret(os.environ.get("OPENAI_API_KEY"))
    if getattr(args, "host_id", None):
        from .store.owners import set_host_id

        set_host_id(args.host_id)
    for handler in logging.getLogger().handlers:  # on the handlers: a logger's filter misses its children
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is a BrokenPipeError caught below
        return code
    except PrelabelError as e:
        from .config import EXIT_ERROR, EXIT_JOB_ERROR, EXIT_STORAGE, EXIT_USAGE
        from .errors import ReviewFileError

        print(f"prelabel: error: {redact(str(e))}", file=sys.stderr)
        # 1 is for what nobody foresaw: a user's mistake has the code of its kind
        return (EXIT_JOB_ERROR if isinstance(e, (JobFileError, ReviewFileError))
                else EXIT_STORAGE if isinstance(e, StorageError)
                else EXIT_USAGE if isinstance(e, UsageError) else EXIT_ERROR)
    except BrokenPipeError:  # `prelabel status | head`: the reader left; say nothing more, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the flush at exit raises again
        return EXIT_BROKEN_PIPE
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("prelabel: interrupted; finished work is saved, run the same command to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
