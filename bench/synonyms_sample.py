"""Synonym variants of the example tickets, for reading: the first N that the synonym step makes.

    python bench/synonyms_sample.py                   # 100 variants, as jsonl on stdout
    python bench/synonyms_sample.py --count 100 --data jobs/examples/data/tickets.jsonl

The step is the example job's (``jobs/examples/augment.yaml``: n=2, aug_p=0.15), seeded per ticket
as a run seeds it (its line number). Each line: the ticket, the variant, and whether the simulator's
fidelity check passes it (its keyword rule, ``prelabel.simulator.answers.fidelity_verdict``).
Run against another checkout (``PYTHONPATH=/tmp/v0``) it shows that checkout's synonyms.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--data", type=Path, default=ROOT / "jobs" / "examples" / "data" / "tickets.jsonl")
    args = parser.parse_args()
    import augment
    from prelabel.config import SynonymStep

    try:
        from prelabel.simulator.answers import fidelity_verdict
    except ImportError:  # a checkout without the fidelity check
        fidelity_verdict = None
    step = SynonymStep(kind="synonym", n=2, aug_p=0.15)
    made = 0
    for line, raw in enumerate(args.data.read_text(encoding="utf-8").splitlines(), 1):
        text = json.loads(raw)["text"]
        for variant in augment.local_variants(step, text, [], seed=line):
            row = {"line": line, "source": text, "variant": variant}
            if fidelity_verdict is not None:
                row["simulator_faithful"] = fidelity_verdict(text, variant)[0]
            print(json.dumps(row, ensure_ascii=False))
            made += 1
            if made == args.count:
                return


if __name__ == "__main__":
    sys.exit(main())
