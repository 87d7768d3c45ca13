"""How long loading a hostile job file takes, and the memory it allocates, before it is refused.

    python bench/hostile_jobfiles.py            # every case
    python bench/hostile_jobfiles.py --no-bomb  # without the alias bombs (before the fix: 62 s, then MemoryError)

Peak memory is tracemalloc's, which also slows Python-level parsing several times over: compare
rows with each other, not with a run without it. Run it under ``ulimit -v`` on an older checkout.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

from prelabel.job.jobfile import load_job

LOL = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
HEAD = ("name: x\ninput: {path: d.jsonl}\nmodel: {name: gpt-4o-mini}\n"
        "task: {kind: classify, labels: {a: one, b: two}}\n")


def bomb(levels: int) -> str:
    """"Billion laughs": each line lists the one above nine times; 9^levels strings expanded."""
    names = "abcdefghi"[:levels]
    return f"a: &a {LOL}\n" + "".join(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip(names, names[1:]))


def cases(with_bombs: bool) -> dict[str, str]:
    chain = "a0: &a0 " + "[" * 60 + "]" * 60 + "\n" + "".join(
        f"a{k}: &a{k} " + "[" * 60 + f"*a{k - 1}" + "]" * 60 + "\n" for k in range(1, 20))
    found = {"bomb, 6 levels (531,441 values)": bomb(6), "bomb, 9 levels (342 bytes)": bomb(9)} if with_bombs else {}
    return {**found,
            "1 MB of '- a' lines": "a:\n" + "- a\n" * 262_000,
            "5,000 nested brackets": "a: " + "[" * 5000 + "]" * 5000 + "\n",
            "aliases 1,200 levels deep": HEAD + chain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-bomb", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    (folder / "d.jsonl").write_text('{"id": 1, "text": "hi"}\n', encoding="utf-8")
    print("| file | bytes | ms | peak MiB | outcome |\n|---|---:|---:|---:|---|")
    for name, text in cases(not args.no_bomb).items():
        path = folder / "job.yaml"
        path.write_text(text, encoding="utf-8")
        tracemalloc.start()
        began = time.perf_counter()
        try:
            load_job(path)
            outcome = "loaded"
        except Exception as e:  # the old code's RecursionError and MemoryError are results too
            outcome = f"{type(e).__name__}: {str(e).removeprefix(str(path))[:80]}"
        took, peak = time.perf_counter() - began, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"| {name} | {len(text.encode()):,} | {took * 1000:,.1f} | {peak / 2**20:,.1f} | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
