"""Local augmentation speed on one core: synonym and noise variants per second, and dedupe.

    python bench/augment_rate.py                 # 2,000 support texts per step
    python bench/augment_rate.py --texts 500

The process is pinned to one CPU. Two corpora, in this order:
licences: the distinct 8-45 word sentences of Debian's /usr/share/common-licenses (about 800, 1,700
          distinct words): a wide vocabulary met for the first time, so WordNet's caches are cold.
support:  support messages of 1-3 sentences (8-45 words) with names, numbers and stopwords, drawn
          from 16 sentences: a narrow vocabulary, caches warm.
WordNet's one-time load (NLTK's reader and the part-of-speech table) is timed apart. Dedupe:
1,000,000 texts hashed into a Deduper (time and memory), then ``admit`` for every variant made.
"""
from __future__ import annotations

import argparse
import glob
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import augment  # noqa: E402
from bench.harness import machine, peak_rss_mb  # noqa: E402
from prelabel.config import NoiseStep, SynonymStep  # noqa: E402

SENTENCES = [
    "I love the new update, great work by the team.",
    "The app crashes every morning when I open my calendar.",
    "My order 48213 arrived two days late and the box was damaged.",
    "Maria from support answered quickly and solved the problem.",
    "Where can I change the billing address on my account?",
    "The delivery to Berlin took longer than the website promised.",
    "Please refund the second charge of 19.99 on my card.",
    "This is the worst customer service I have ever experienced.",
    "The price went up again without any warning or explanation.",
    "Thanks for the fast reply, everything works fine now.",
    "Is the premium plan available in Canada and Mexico?",
    "The invoice shows the wrong company name and tax number.",
    "After the last update the sync with Google Drive stopped working.",
    "I waited forty minutes on hold before someone picked up.",
    "The new dashboard is clean, simple and much faster.",
    "Could you explain why my account was suspended yesterday?",
]


def support_texts(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(SENTENCES, rng.randint(1, 3))) for _ in range(count)]


def licence_texts() -> list[str]:
    found: dict[str, None] = {}
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for sentence in re.split(r"(?<=[.;:])\s+", re.sub(r"\s+", " ", raw)):
            if 8 <= len(sentence.split()) <= 45:
                found[sentence.strip()] = None
    return list(found)


def rate(step, sources: list[str]) -> tuple[int, float, list[tuple[str, str]]]:
    made: list[tuple[str, str]] = []
    start = time.process_time()
    for i, text in enumerate(sources):
        made += [(text, v) for v in augment.local_variants(step, text, [], seed=i)]
    return len(made), time.process_time() - start, made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"machine: {machine()}; pinned to one core")
    start = time.process_time()
    hint = augment.check_wordnet()
    if hint:
        sys.exit(hint)
    augment.local_variants(SynonymStep(kind="synonym"), "a warm welcome", [], seed=0)
    print(f"WordNet one-time load: {time.process_time() - start:.2f} CPU s")

    steps = [("synonym n=2 aug_p=0.15", SynonymStep(kind="synonym", n=2, aug_p=0.15)),
             ("noise n=1 ops=[keyboard, swap]", NoiseStep(kind="noise", n=1, ops=["keyboard", "swap"])),
             ("noise n=2 ops=[word_swap]", NoiseStep(kind="noise", n=2, ops=["word_swap"]))]
    every: list[tuple[str, str]] = []
    for corpus, sources in (("licences", licence_texts()), ("support", support_texts(args.texts))):
        if not sources:
            continue
        words = sum(len(t.split()) for t in sources) / len(sources)
        print(f"{corpus}: {len(sources):,} texts, {words:.1f} words on average")
        for name, step in steps:
            made, cpu, pairs = rate(step, sources)
            every += pairs
            print(f"  {name:32s} {made / cpu:7,.0f} variants/s  {len(sources) / cpu:7,.0f} sources/s  "
                  f"({made:,} variants of {len(sources) * step.n:,} asked, {cpu:.2f} CPU s)")

    rss0 = peak_rss_mb()
    deduper = augment.Deduper(0.9)
    start = time.process_time()
    for i in range(1_000_000):
        deduper.add_existing(f"{SENTENCES[i % len(SENTENCES)]} #{i}")
    cpu = time.process_time() - start
    print(f"dedupe: 1,000,000 texts hashed in {cpu:.2f} CPU s, peak RSS +{peak_rss_mb() - rss0:.0f} MB")
    start = time.process_time()
    reasons: dict[str | None, int] = {}
    for source, variant in every:
        reason = deduper.admit(variant, source=source)
        reasons[reason] = reasons.get(reason, 0) + 1
    cpu = time.process_time() - start
    print(f"dedupe: admit {len(every) / cpu:,.0f} variants/s; outcomes {reasons}")


if __name__ == "__main__":
    main()
