"""CPU of the whole ``prelabel run`` process, as a user pays it: startup, ingest, labelling, outputs.

    python bench/process_cpu.py                        # 10,000 and 5,000 items, max_concurrency 32 and 128
    python bench/process_cpu.py --items 10000 --concurrency 128 --repeats 1
    python bench/process_cpu.py --startup-only

Each run is ``prelabel run JOB --db FRESH.db`` in its own process under ``/usr/bin/time -v``, against
``prelabel simulate --latency-ms 0`` (no rate limit) in another process, so the simulator's CPU is not
counted. The job is the benchmark's classify job with the default outputs (JSONL and Label Studio) and
limits far above what the simulator serves. Reported: user+sys CPU seconds per 1,000 items, max RSS,
wall; the median of ``--repeats`` (3) runs by CPU. Startup is ``prelabel --help`` and
``prelabel status`` on an empty store, median of 5; the fixed cost of ``run`` is the CPU of a run of
a 1-item job.

CPU seconds, not wall time, are the figure: on a shared VM they move less with the other load (though
a loaded machine still adds some: compare figures taken under the same load). To compare with another
checkout of prelabel in the same venv, set PYTHONPATH to it: the runs inherit it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, simulator, write_job  # noqa: E402

PRELABEL = str(Path(sys.executable).with_name("prelabel"))
_TIME_FIELDS = {"user": r"User time \(seconds\): ([\d.]+)", "sys": r"System time \(seconds\): ([\d.]+)",
                "rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
                "wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)"}


def _wall_s(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def timed(argv: list[str], env: dict | None = None) -> dict:
    """``argv`` under ``/usr/bin/time -v``: CPU s (user+sys), max RSS MB, wall s, exit code."""
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env)
    found = {key: re.search(pattern, proc.stderr).group(1) for key, pattern in _TIME_FIELDS.items()}
    return {"cpu_s": round(float(found["user"]) + float(found["sys"]), 3), "user_s": float(found["user"]),
            "sys_s": float(found["sys"]), "rss_mb": round(int(found["rss_kb"]) / 1024, 1),
            "wall_s": round(_wall_s(found["wall"]), 2), "code": proc.returncode,
            "stderr": proc.stderr.split("\tCommand being timed")[0][-2000:]}


def job_file(folder: Path, n: int, concurrency: int) -> Path:
    make_items(folder / "items.jsonl", n)
    job = write_job(folder, folder / "items.jsonl", rpm=10_000_000, tpm=1_000_000_000, concurrency=concurrency)
    # The outputs a user gets by default: JSONL and Label Studio.
    job.write_text(job.read_text().replace("formats: [jsonl]", "formats: [jsonl, labelstudio]"))
    return job


def _env(home: str, url: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def run_once(url: str, n: int, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        job = job_file(folder, n, concurrency)
        env = _env(tmp, url)
        result = timed([PRELABEL, "run", str(job), "--db", str(folder / "bench.db")], env)
        drafts = folder / "out" / "drafts.jsonl"
        result["drafts"] = sum(1 for _ in open(drafts)) if drafts.exists() else 0
    if result["code"] != 0 or result["drafts"] != n:
        raise SystemExit(f"run of {n} items failed (exit {result['code']}, {result['drafts']} drafts):\n"
                         + result["stderr"])
    del result["stderr"]
    result["cpu_s_per_1000"] = round(result["cpu_s"] / n * 1000, 3)
    return result


def median_run(url: str, n: int, concurrency: int, repeats: int) -> dict:
    runs = sorted((run_once(url, n, concurrency) for _ in range(repeats)), key=lambda r: r["cpu_s"])
    median = dict(runs[len(runs) // 2])
    median["items"], median["max_concurrency"] = n, concurrency
    median["cpu_s_per_1000_runs"] = [r["cpu_s_per_1000"] for r in runs]
    return median


def startup(url: str, repeats: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = _env(tmp, url)
        db = str(folder / "empty.db")
        out = {}
        for name, argv in (("help", [PRELABEL, "--help"]), ("status", [PRELABEL, "status", "--db", db])):
            runs = sorted(timed(argv, env)["cpu_s"] for _ in range(repeats))
            out[f"{name}_cpu_s"] = runs[len(runs) // 2]
            out[f"{name}_cpu_s_runs"] = runs
        runs = sorted(run_once(url, 1, 32)["cpu_s"] for _ in range(repeats))
        out["run_1_item_cpu_s"] = runs[len(runs) // 2]
        out["run_1_item_cpu_s_runs"] = runs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 5_000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startup-only", action="store_true")
    args = parser.parse_args()
    print(f"# {machine()}", flush=True)
    with simulator("--latency-ms", "0") as url:
        print("startup", json.dumps(startup(url)), flush=True)
        if args.startup_only:
            return
        for n in args.items:
            for concurrency in args.concurrency:
                print("run", json.dumps(median_run(url, n, concurrency, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
