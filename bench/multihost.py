"""Several hosts, one queue (issue 11): N worker processes on one job, sharing nothing but the database.

    python bench/multihost.py                          # clean, kill and stop, 3 workers, SQLite in a temp folder
    python bench/multihost.py clean --workers 4        # one scenario
    python bench/multihost.py --db postgresql://postgres@127.0.0.1:5432/multihost --lease-s 20
                                  # PostgreSQL: a database of that name (+ scenario) made and dropped per scenario
    python bench/multihost.py --mode long              # long-running `prelabel work` instead of `work --once`

Each worker is `prelabel work --once` (or `work`) in a folder of its own with a host identity of its own
(`PRELABEL_HOST_ID=bench-N`), so the pid check between processes of one host does not apply: they are
hosts as far as the queue can tell. One job of 3,000 items (rpm 6000 in the job) against the simulator
in its own process, enforcing 100 requests/s per rolling second (`--style`, as in
`bench/throughput.py styles`), 200 ms latency.

Scenarios:
  clean   all workers run to the end.
  kill    worker 0 is SIGKILLed once a third of the items are done; the others go on. Its leases expire
          after `Engine.lease_s`; then (with --once) a takeover tick on another host id finishes them,
          as the next cron tick would (long-running workers take them themselves).
  stop    worker 0 is SIGSTOPped at a third, left stopped past its lease while the others (and a
          takeover tick) finish its items, then SIGCONTed: its late commits should be refused.

Reported, from the simulator's own counts: items answered exactly once / more than once / never,
duplicate ids in drafts.jsonl, tokens billed (the job's spent_tokens), combined throughput as a share of
the ceiling (admissions between the first and the last, as the server saw them, until the workers that
were not stopped exited), 429s as a share of requests, and the peak requests per second (arrivals,
429s included) with the seconds over the ceiling.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, write_job  # noqa: E402
from prelabel.config import Engine  # noqa: E402
from prelabel.store import open_store  # noqa: E402

CLI = [sys.executable, "-m", "prelabel"]
CEILING_PER_S = 100  # the simulator's limit: 6000 RPM enforced per rolling second


@contextmanager
def simulator(style: str):
    """`prelabel simulate` with its per-content counts on (the per-item request count)."""
    proc = subprocess.Popen([*CLI, "simulate", "--port", "0", "--style", style, "--rpm", str(CEILING_PER_S * 60),
                             "--latency-ms", "200", "--seed", "3"], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"(http://\S+)", proc.stdout.readline()).group(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def sim_stats(url: str) -> dict:
    query = "?admissions=1&seconds=1&contents=1&tenths=1"
    with urllib.request.urlopen(url.replace("/v1", "/_sim/stats") + query) as r:
        return json.loads(r.read())


class Fleet:
    """The worker processes, each in its own folder, with its own host identity."""

    def __init__(self, folder: Path, db: str, url: str, mode: str, lease_s: float) -> None:
        self.folder, self.db, self.url, self.mode, self.lease_s = folder, db, url, mode, lease_s
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, host: str, once: bool | None = None) -> subprocess.Popen:
        home = self.folder / host
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
        env.update(PRELABEL_DB=self.db, PRELABEL_HOST_ID=host, OPENAI_BASE_URL=self.url, OPENAI_API_KEY="sk-bench",
                   XDG_DATA_HOME=str(home / "xdg"), PRELABEL_LEASE_S=str(self.lease_s))
        once = self.mode == "once" if once is None else once
        args = ["work", "--quiet", "--output-root", str(self.folder / "out")] + (["--once"] if once else [])
        log = open(home / "worker.log", "w")
        proc = subprocess.Popen([*CLI, "-v", *args], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
        self.procs[host] = proc
        return proc

    def running(self, skip: set[str] = frozenset()) -> list[str]:
        return [h for h, p in self.procs.items() if h not in skip and p.poll() is None]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


STEADY_TRIM_S = 3.0  # the steady-state figure leaves out this much at each end of the run
SHARE_LOG = re.compile(r"^(\S+ \S+) prelabel\.worker\.sharing INFO pacing at (\d+)% of the ceiling: (\d+) workers")


def shares_logged(log: Path, offset: float) -> list[tuple[float, int, int]]:
    """(when on the simulator's clock, share %, workers) for each share change a worker logged."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if m := SHARE_LOG.match(line):
            when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - offset
            events.append((round(when, 2), int(m.group(2)), int(m.group(3))))
    return events


def where_lost(tenths: list[list[int]], first_admit: float, exits: dict[str, float]) -> dict:
    """The ceiling's admissions not made, by phase: the first and the last STEADY_TRIM_S seconds and
    the middle; with the steady state's share (the middle alone) beside the whole run's, and the
    tenths after the first worker's exit (the tail: workers leaving while others still send)."""
    per_tenth = CEILING_PER_S / 10
    n = len(tenths)
    trim = int(STEADY_TRIM_S * 10)
    lost = lambda rows: round(sum(per_tenth - a for _, a in rows) / CEILING_PER_S, 2)  # noqa: E731
    middle = tenths[trim:n - trim]
    first_exit = min(exits.values(), default=None)
    tail = [r for r in tenths if first_exit is not None and r[0] / 10 >= first_exit - first_admit]
    return {
        "span_s": round(n / 10, 1),
        "lost_ceiling_s": {"first_3s": lost(tenths[:trim]), "middle": lost(middle), "last_3s": lost(tenths[n - trim:]),
                           "after_first_exit": lost(tail), "after_first_exit_s": round(len(tail) / 10, 1)},
        "steady_share": round(sum(a for _, a in middle) / (len(middle) * per_tenth), 3) if middle else 0.0,
    }


def counts(db: str, job_id: str) -> dict:
    store = open_store(db)
    try:
        return store.counts(job_id)
    finally:
        store.close()


def wait_until(check, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


@contextmanager
def database(db: str | None, folder: Path, name: str):
    """A store of its own per scenario (answers cached by one must not answer the next): a SQLite file
    in the scenario's folder, or a PostgreSQL database made for it and dropped after."""
    if not db or not db.startswith(("postgres://", "postgresql://")):
        yield db or str(folder / "bench.db")
        return
    import psycopg
    server, base = db.rsplit("/", 1)
    own = f"{base}_{name}_{os.getpid()}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{own}"')
    try:
        yield f"{server}/{own}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{own}" WITH (FORCE)')


def scenario(name: str, workers: int, items: int, style: str, db: str | None, mode: str, lease_s: float,
             logs: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="multihost-") as tmp, simulator(style) as url, \
            database(db, Path(tmp), name) as db:
        folder = Path(tmp)
        (folder / "out").mkdir()
        make_items(folder / "items.jsonl", items, seed=11)
        job = write_job(folder / "out", folder / "items.jsonl", rpm=CEILING_PER_S * 60, concurrency=32)
        env = {**os.environ, "PRELABEL_DB": db}
        job_id = subprocess.run([*CLI, "submit", str(job), "--new"], env=env, check=True, capture_output=True,
                                text=True).stdout.strip()
        fleet = Fleet(folder, db, url, mode, lease_s)
        row: dict = {"scenario": name, "workers": workers, "items": items, "mode": mode, "style": style}
        t0 = time.monotonic()
        try:
            for n in range(workers):
                fleet.start(f"bench-{n}")
            victim = fleet.procs["bench-0"]
            struck = None
            if name in ("kill", "stop"):
                wait_until(lambda: counts(db, job_id).get("done", 0) >= items // 3, 600)
                victim.send_signal(signal.SIGKILL if name == "kill" else signal.SIGSTOP)
                struck = time.monotonic()
                row["struck_at_done"] = counts(db, job_id).get("done", 0)
            skip = {"bench-0"} if name == "stop" else set()

            exits: dict[str, float] = {}

            def settled() -> bool:  # --once: the workers exited; long-running: the job is done
                for h, p in fleet.procs.items():
                    if p.poll() is not None and h not in exits:
                        exits[h] = time.monotonic()
                if mode == "once":
                    return not fleet.running(skip)
                c = counts(db, job_id)
                return c.get("done", 0) + c.get("failed", 0) >= items or not fleet.running(skip)

            wait_until(settled, 900)
            row["main_wall_s"] = round(time.monotonic() - t0, 1)
            main = sim_stats(url)
            left = counts(db, job_id)
            row["left_when_survivors_settled"] = {k: v for k, v in left.items() if k != "done"}
            if struck is not None and left.get("done", 0) < items:
                # The dead (or stopped) worker's leases expire lease_s after its last renewal at most.
                wait = max(0.0, struck + lease_s + 2 - time.monotonic())
                row["waited_for_lease_s"] = round(wait, 1)
                time.sleep(wait)
                if mode == "once":  # the next cron tick, on another host
                    fleet.start("bench-takeover").wait(600)
                else:
                    wait_until(lambda: counts(db, job_id).get("done", 0) >= items, 600)
            if name == "stop":
                victim.send_signal(signal.SIGCONT)
                try:
                    row["stopped_worker_exit"] = victim.wait(120) if mode == "once" else None
                except subprocess.TimeoutExpired:
                    row["stopped_worker_exit"] = "still running after 120 s"
                time.sleep(2 if mode == "long" else 0)
            row["exit_codes"] = {h: p.poll() for h, p in fleet.procs.items()}
        finally:
            fleet.stop_all()
        row["total_wall_s"] = round(time.monotonic() - t0, 1)
        final = sim_stats(url)
        store = open_store(db)
        try:
            row["counts"] = store.counts(job_id)
            row["spent_tokens"] = store.get_job(job_id).spent_tokens
            totals = store.usage_totals(job_id)
            row["ledger_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
            row["paid_for_lost_leases"] = totals["paid_for_lost_leases"]
        finally:
            store.close()
        if logs is not None:  # the workers' logs (-v: share changes, retries) kept past the temp folder
            for host in fleet.procs:
                (logs / name).mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / host / "worker.log", logs / name / f"{host}.log")
        subprocess.run([*CLI, "export", job_id], env=env, capture_output=True, text=True)
        ids = [json.loads(line)["id"] for line in (folder / "out" / "out" / "drafts.jsonl").read_text().splitlines()]
        answered = dict((text, n) for text, n in final["answered_by_content"])
        seconds = [arrived for _, arrived, _ in main["per_second"]]
        span = (main["last_admit"] or 0) - (main["first_admit"] or 0)
        if main["first_admit"] is not None:
            row["timeline"] = where_lost(main["admitted_per_tenth"], main["first_admit"],
                                         {h: t for h, t in exits.items() if h != "bench-0" or name == "clean"})
            offset = time.time() - time.monotonic()  # the simulator's clock is this machine's monotonic one
            row["shares"] = {h: shares_logged(folder / h / "worker.log", offset + main["first_admit"])
                             for h in fleet.procs}
            row["exits_s"] = {h: round(t - main["first_admit"], 1) for h, t in exits.items()}
            if struck is not None:  # when worker 0 was killed or stopped, on the same clock
                row["struck_s"] = round(struck - main["first_admit"], 2)
            row["admitted_per_tenth"] = [a for _, a in main["admitted_per_tenth"]]
        row.update({
            "items_answered_once": sum(1 for n in answered.values() if n == 1),
            "items_answered_more": sum(1 for n in answered.values() if n > 1),
            "items_never_answered": items - len(answered),
            "draft_lines": len(ids), "duplicate_ids": len(ids) - len(set(ids)),
            "share_of_ceiling": round((main["admitted"] - 1) / span / CEILING_PER_S, 3) if span > 0 else 0.0,
            "requests": final["requests"], "rate_limited": final["rate_limited"],
            "share_429": round(final["rate_limited"] / max(1, final["requests"]), 4),
            "peak_requests_per_s": max(seconds, default=0),
            "seconds_over_ceiling": f"{sum(1 for s in seconds if s > CEILING_PER_S)} of {len(seconds)}",
        })
    return row


SCENARIOS = ("clean", "kill", "stop")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="|".join(SCENARIOS), help="default: all")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--style", default="openai", choices=["openai", "azure", "bucket", "gateway"])
    parser.add_argument("--db", help="a SQLite path or a postgresql:// URL (default: a SQLite file per scenario)")
    parser.add_argument("--mode", choices=["once", "long"], default="once")
    parser.add_argument("--logs", type=Path, help="keep each worker's log here (LOGS/SCENARIO/HOST.log)")
    parser.add_argument("--lease-s", type=float, default=Engine().lease_s,
                        help="the workers' lease ($PRELABEL_LEASE_S); kill and stop wait past it")
    args = parser.parse_args()
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}: one of {', '.join(SCENARIOS)}")
    print(f"# {machine()}  load {os.getloadavg()[0]:.2f}", flush=True)
    for name in args.scenarios or SCENARIOS:
        print(name, json.dumps(scenario(name, args.workers, args.items, args.style, args.db, args.mode,
                                                 args.lease_s, args.logs)), flush=True)
