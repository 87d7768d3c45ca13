"""A 1,000,000-item job's batch input files, written by streaming: the goal is a peak under 300 MB.

    /usr/bin/time -v python bench/batch_files.py                 # 1,000,000 items, OpenAI's limits
    python bench/batch_files.py --items 100000 --max-requests 10000

Each item is read from the job's input, its request built by the engine exactly as a live run
builds it (``Task.messages``, ``LLMEngine.request`` and ``prepare``: the body and its cache key),
and written as a line by ``prelabel.batch.files``; a completed file's record is dropped at once,
as the executor drops it once the chunk's intent is recorded. The input (made by bench.harness) is
written before the clock starts. Prints the files, requests, bytes, seconds and the process's peak
RSS (VmHWM); ``/usr/bin/time -v`` gives the same peak as "Maximum resident set size".
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, write_job  # noqa: E402

LIMIT_MB = 300.0


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--max-requests", type=int, default=50_000)
    parser.add_argument("--max-bytes", type=int, default=200_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    import openai

    from prelabel.batch.files import InputFileWriter, chat_line
    from prelabel.config import Engine
    from prelabel.errors import InputError
    from prelabel.job.inputs import read_items
    from prelabel.llm.engine import LLMEngine
    from prelabel.queue.submit import prepare

    folder = Path(tempfile.mkdtemp(prefix="prelabel-batch-bench-"))
    data = folder / "items.jsonl"
    made = time.perf_counter()
    make_items(data, args.items)
    job = write_job(folder, data, rpm=10_000)
    print(f"input: {args.items:,} items, {data.stat().st_size / 1e6:.0f} MB, made in {time.perf_counter() - made:.1f} s")

    spec, task = prepare(job)
    client = openai.AsyncOpenAI(api_key="sk-bench", base_url="https://api.openai.com/v1")
    engine = LLMEngine(client, spec.model, Engine(), lambda key: None)
    response_format, max_tokens = task.response_format(), spec.budget.max_output_tokens
    files = requests = size = 0
    start = time.perf_counter()
    with InputFileWriter(folder / "batch", "bench", max_requests=args.max_requests, max_bytes=args.max_bytes) as writer:
        def done(completed) -> None:
            nonlocal files, requests, size
            for file in completed:  # its record goes to the store; here, only counted
                files, requests, size = files + 1, requests + file.requests, size + file.bytes
                file.path.unlink()  # the bench keeps no 1 GB of files; the peak is the writer's

        for entry in read_items(spec.input):
            if isinstance(entry, InputError):
                continue
            prepared = engine.prepare(engine.request(task.messages(entry.text), response_format, max_tokens))
            done(writer.add(chat_line(prepared)))
        done(writer.close())
    elapsed = time.perf_counter() - start
    peak = peak_mb()
    print(f"machine: {machine()}")
    print(f"files: {files}  requests: {requests:,}  bytes: {size / 1e6:,.0f} MB  "
          f"({size / max(1, requests):.0f} bytes a line)  duplicates skipped: {writer.duplicates}")
    print(f"written in {elapsed:.1f} s ({requests / elapsed:,.0f} lines/s)")
    print(f"peak RSS (VmHWM): {peak:.0f} MB  goal < {LIMIT_MB:.0f} MB: {'met' if peak < LIMIT_MB else 'NOT MET'}")
    if not args.keep:
        import shutil

        shutil.rmtree(folder)
    return 0 if peak < LIMIT_MB and requests == args.items else 1


if __name__ == "__main__":
    sys.exit(main())
