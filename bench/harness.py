"""Shared pieces of the benchmarks: a simulator in its own process, synthetic jobs, measurements."""
from __future__ import annotations

import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

WORDS = ("great thanks love broken refund late angry question where when order account app invoice delivery "
         "support update crash slow fast price help please today again never always team service").split()


def make_items(path: Path, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))
            f.write(json.dumps({"id": f"b{i}", "text": f"{text} #{i}"}) + "\n")


# What ``--with`` adds to the benchmark job: the core's figures must hold with each of these.
VARIANTS = {
    "base": ("", ""),
    # n = 5 samples per request, at a temperature, for the share that agree
    "consistency": ("", "review: {confidence: consistency, samples: 5}\n"),
    # three of 200 examples per item, the closest by TF-IDF (no embeddings endpoint)
    "similar": (", examples: {examples}, example_selection: similar, max_examples: 3", ""),
    # the same by the endpoint's /v1/embeddings, batched per lease and cached
    "similar-embeddings": (", examples: {examples}, example_selection: similar, max_examples: 3, "
                           "embedding_model: text-embedding-3-small", ""),
    # two synonym and one noise variant of every item, made off the event loop while labeling goes on
    "augment": ("", "augment: {seed: 7, steps: [{kind: synonym, n: 2}, {kind: noise, n: 1}]}\n"),
}


def write_examples(path: Path, n: int = 200) -> None:
    rng = random.Random(7)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16)))
            label = ("positive", "negative", "neutral")[i % 3]
            f.write(json.dumps({"text": f"{text} (example {i})", "label": label}) + "\n")


def write_job(folder: Path, data: Path, *, rpm: int, tpm: int = 100_000_000, concurrency: int | str = 32,
              budget: str = "", variant: str = "base") -> Path:
    task_extra, extra = VARIANTS[variant]
    if "{examples}" in task_extra:
        write_examples(folder / "examples.jsonl")
        task_extra = task_extra.format(examples=folder / "examples.jsonl")
    job = folder / "job.yaml"
    job.write_text(
        "name: bench\n"
        f"input: {{path: {data}, text_field: text, id_field: id}}\n"
        f"model: {{name: gpt-4o-mini, rpm: {rpm}, tpm: {tpm}, max_concurrency: {concurrency}, max_retries: 8}}\n"
        f"task: {{kind: classify, labels: {{positive: pleased, negative: unhappy, neutral: no attitude}}{task_extra}}}\n"
        f"budget: {{max_output_tokens: 16{', ' + budget if budget else ''}}}\n"
        f"output: {{dir: {folder / 'out'}, formats: [jsonl]}}\n" + extra)
    return job


@contextmanager
def simulator(*args: str):
    """``prelabel simulate`` in its own process (its CPU is not the worker's); yields the base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "prelabel", "simulate", "--port", "0", "--no-tracking", *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://\S+)", line).group(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sim_stats(url: str) -> dict:
    """What the simulator counted, with its admissions (when, the longest gap): how the server saw it."""
    import urllib.request
    with urllib.request.urlopen(url.replace("/v1", "/_sim/stats") + "?admissions=1") as r:
        return json.loads(r.read())


def machine() -> str:
    model = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}"


def now() -> float:
    return time.perf_counter()
