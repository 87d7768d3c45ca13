"""Peak memory of each CLI step on a large input: the goal is under 300 MB for 1,000,000 items.

    python bench/memory.py                      # 1,000,000 items, the run stopped by budget after ~20,000
    python bench/memory.py --items 100000 --run-items 5000
    python bench/memory.py --with consistency    # or similar, similar-embeddings, augment

Each step is ``python -m prelabel ...`` in its own process, as a user runs it, with the store
(PRELABEL_DB) and the input in a temporary folder:

plan:    counts tokens and cost for every item, offline.
submit:  ingests every item into SQLite.
run:     a worker leasing from the million-item job against a zero-latency ``prelabel simulate`` in
         another process, stopped by budget.max_total_tokens after about --run-items items (exit 4,
         expected); its cap comes from the plan's tokens per item.
export:  drafts.jsonl, Label Studio tasks and the report for what is done (exit 4: items stopped).

Peak RSS is the step's own high-water mark (VmHWM), read by a small wrapper at exit. ru_maxrss from
wait4 is shown beside it: Linux folds the forking parent's peak into a child's ru_maxrss, so it can
only be higher; this script imports nothing of prelabel to keep that floor low. The verdict takes
the larger of the two.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import VARIANTS, machine, make_items, simulator  # noqa: E402
from bench.harness import write_job as harness_write_job  # noqa: E402

LIMIT_MB = 300.0

# Runs ``python -m prelabel ARGS`` in this process and writes its VmHWM (kB) to REPORT at exit.
_WRAPPER = """
import atexit, resource, runpy, sys
report = sys.argv[1]

def write_peak():
    try:
        with open('/proc/self/status') as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(report, 'w') as out:
        out.write(str(kb))

atexit.register(write_peak)
sys.argv = ['prelabel', *sys.argv[2:]]
runpy.run_module('prelabel', run_name='__main__', alter_sys=True)
"""


@dataclass
class Step:
    name: str
    items: int
    wall_s: float
    peak_mb: float      # VmHWM of the step's process
    maxrss_mb: float    # ru_maxrss from wait4 (may carry this script's own peak)
    code: int
    stdout: str
    stderr: str


def write_job(folder: Path, data: Path, *, budget: str = "", variant: str = "base") -> Path:
    """bench.harness.write_job, with the Label Studio output too (export writes both)."""
    job = harness_write_job(folder, data, rpm=10_000_000, tpm=1_000_000_000, budget=budget, variant=variant)
    job.write_text(job.read_text().replace("name: bench\n", "name: bench-memory\n")
                   .replace("formats: [jsonl]", "formats: [jsonl, labelstudio]"))
    return job


def measure(name: str, args: list[str], env: dict, folder: Path, items: int = 0) -> Step:
    report = folder / f"{name}.peak"
    out_path, err_path = folder / f"{name}.out", folder / f"{name}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(report), *args], env=env,
                                stdout=out, stderr=err)
        # wait4, not proc.wait(): it returns this child's own rusage.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_kb = int(report.read_text()) if report.exists() else 0
    return Step(name, items, round(wall, 1), peak_kb / 1024, usage.ru_maxrss / 1024, proc.returncode,
                out_path.read_text(), err_path.read_text())


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    if not match:
        raise SystemExit(f"cannot read {pattern!r} from the plan:\n{text}")
    return int(match.group(1).replace(",", ""))


def _check(step: Step, expected: int) -> None:
    if step.code != expected:
        raise SystemExit(f"{step.name} exited {step.code} (expected {expected}):\n{step.stderr[-2000:]}")


def _done(job_id: str, env: dict) -> int:
    rows = json.loads(subprocess.check_output([sys.executable, "-m", "prelabel", "status", job_id, "--json"],
                                              env=env, text=True))["jobs"]
    return rows[0].get("done", 0)


def bench(n: int, run_items: int, variant: str = "base") -> list[Step]:
    with tempfile.TemporaryDirectory(prefix="prelabel-mem-") as tmp, simulator("--latency-ms", "0") as url:
        folder = Path(tmp)
        data = folder / "items.jsonl"
        t0 = time.perf_counter()
        make_items(data, n)
        print(f"# wrote {n:,} items ({data.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s",
              flush=True)
        env = {**os.environ, "PRELABEL_DB": str(folder / "bench.db"), "OPENAI_BASE_URL": url,
               "OPENAI_API_KEY": "sk-bench"}

        job = write_job(folder, data, variant=variant)
        plan = measure("plan", ["plan", str(job)], env, folder, n)
        _check(plan, 0)
        items = _number(r"items:\s+([\d,]+)", plan.stdout)
        per_item = (_number(r"prompt tokens:\s+([\d,]+)", plan.stdout)
                    + _number(r"completion tokens:\s+~([\d,]+) expected", plan.stdout)) / items
        cap = math.ceil(per_item * run_items)
        print(f"# plan: {per_item:.1f} tokens per item; budget.max_total_tokens {cap:,} for ~{run_items:,} items",
              flush=True)

        job = write_job(folder, data, budget=f"max_total_tokens: {cap}", variant=variant)
        steps = [plan]
        submit = measure("submit", ["submit", str(job)], env, folder, n)
        _check(submit, 0)
        job_id = submit.stdout.split()[0]
        steps.append(submit)

        run = measure("run", ["run", "-q", str(job)], env, folder)
        _check(run, 4)  # stopped by the budget: expected
        run.items = _done(job_id, env)
        steps.append(run)

        export = measure("export", ["export", job_id], env, folder, run.items)
        _check(export, 4)  # the stopped items make it exit 4 too
        written = sum(1 for _ in open(folder / "out" / "drafts.jsonl"))
        if written != run.items and variant != "augment":  # variants are drafts too
            raise SystemExit(f"export wrote {written} drafts, the store has {run.items} done")
        steps.append(export)
        print(f"# db {(folder / 'bench.db').stat().st_size / 2**20:.0f} MB; this script's own peak "
              f"{_self_peak_mb():.0f} MB", flush=True)
        return steps


def _self_peak_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--run-items", type=int, default=20_000, help="items the run step does before its budget stops it")
    parser.add_argument("--with", dest="variant", choices=list(VARIANTS), default="base",
                        help="the same job with one feature on (see bench/harness.py)")
    args = parser.parse_args()
    print(f"# {machine()}  --with {args.variant}", flush=True)
    steps = bench(args.items, min(args.run_items, args.items), args.variant)
    print(f"{'step':<8} {'items':>10} {'wall s':>8} {'peak RSS MB':>12} {'ru_maxrss MB':>13}")
    for s in steps:
        print(f"{s.name:<8} {s.items:>10,} {s.wall_s:>8.1f} {s.peak_mb:>12.1f} {s.maxrss_mb:>13.1f}")
    worst = max(max(s.peak_mb, s.maxrss_mb) for s in steps)
    verdict = "PASS" if worst < LIMIT_MB else "FAIL"
    print(f"{verdict}: highest peak {worst:.1f} MB {'<' if worst < LIMIT_MB else '>='} {LIMIT_MB:.0f} MB "
          f"for {args.items:,} items")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
