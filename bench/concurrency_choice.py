"""Should the example jobs ship with ``max_concurrency: auto`` instead of a fixed 32 (or 16)?

Runs example jobs unmodified but for ``model.max_concurrency`` (``--fixed``, 32 by default: what
they shipped with before, 16 for instruct; then ``auto``, what they ship with now),
each as ``prelabel run JOB --input <first N items> --out <tmp> --new``, against

- ``ceiling``: the simulator as a hosted API with a high ceiling (``--rpm 30000``, 400 ms +/- 200 ms),
  once at the job's own rpm (500) and once at ``--rpm`` (a higher tier: where concurrency binds);
- ``one-slot``: the simulator as a one-slot self-hosted server (``--capacity 1``, 400 ms a request,
  like llama.cpp with one slot, but faster);
- ``real``: a running server at ``--base-url`` (e.g. llama-cpp-python's, one slot).

and prints wall time, timeouts, retries and exit code per run:

    .venv/bin/python bench/concurrency_choice.py ceiling one-slot [--items 200] [--jobs sentiment ...]
    .venv/bin/python bench/concurrency_choice.py real --base-url http://127.0.0.1:PORT/v1 --items 20
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import machine, simulator  # noqa: E402
from bench.llamacpp import cut_input, job_variant  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(job: Path, items: int, folder: Path, env: dict, concurrency, rpm: int | None = None) -> dict:
    variant = job_variant(job, folder, max_concurrency=concurrency, **({"rpm": rpm} if rpm else {}))
    out = folder / f"out-{job.stem}-{concurrency}-{rpm}"
    command = [sys.executable, "-m", "prelabel", "run", str(variant), "--input", str(cut_input(job, items, folder)),
               "--out", str(out), "--new", "--db", str(out) + ".db", "-q"]  # a store each: no answer from the cache
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    runs = report.get("runs") or {}
    return {"job": job.stem, "concurrency": concurrency, "rpm": rpm or "job's", "exit": done.returncode,
            "wall_s": round(wall, 1), "by_state": report.get("by_state"), "requests": runs.get("requests"),
            "timeouts": runs.get("timeouts"), "retries": runs.get("retries"),
            "stderr": done.stderr.strip().splitlines()[-2:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="+", choices=["ceiling", "one-slot", "real"])
    parser.add_argument("--jobs", nargs="*", default=["sentiment", "classify_fewshot", "instruct"])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rpm", type=int, default=6000, help="the higher tier for the ceiling scenario")
    parser.add_argument("--base-url", help="the real server, for the 'real' scenario")
    parser.add_argument("--fixed", type=int, default=32, help="the fixed max_concurrency to compare auto with")
    args = parser.parse_args()
    print(f"# {machine()}, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prelabel-concurrency-") as tmp:
        folder = Path(tmp)
        for scenario in args.scenarios:
            if scenario == "real":
                servers = [(None, args.base_url, [None])]
            elif scenario == "ceiling":
                servers = [(["--rpm", "30000", "--latency-ms", "400", "--jitter-ms", "200", "--as-real"], None,
                            [None, args.rpm])]
            else:
                servers = [(["--capacity", "1", "--latency-ms", "400", "--as-real"], None, [None])]
            for sim_args, url, rpms in servers:
                context = simulator(*sim_args) if sim_args else _given(url)
                with context as base:
                    env = {**os.environ, "OPENAI_BASE_URL": base, "OPENAI_API_KEY": "sk-local-no-key"}
                    env.pop("PRELABEL_ALLOWED_BASE_URLS", None)
                    for name in args.jobs:
                        job = ROOT / "jobs/examples" / f"{name}.yaml"
                        for rpm in rpms:
                            for concurrency in (args.fixed, "auto"):
                                row = {"scenario": scenario, **run(job, args.items, folder, env, concurrency, rpm)}
                                rows.append(row)
                                print(json.dumps(row), flush=True)
    print("\n| scenario | job | rpm | max_concurrency | exit | wall s | requests | timeouts | retries |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scenario']} | {r['job']} | {r['rpm']} | {r['concurrency']} | {r['exit']} | {r['wall_s']} "
              f"| {r['requests']} | {r['timeouts']} | {r['retries']} |")
    return 0


class _given:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
