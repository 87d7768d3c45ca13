"""Few-shot examples: read and checked against the task's schema, chosen per item, fitted to the budget.

Pure: vectors for ``similar`` come from the engine (``LLMEngine.prepare_embeddings``/``embed``) and
are passed in. Everything that depends only on the examples (their term weights or vectors, the
``fixed`` and ``diverse`` picks, each example's tokens) is computed once per job; per item only the
item's own vector and a dot product against the examples.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..budget.gate import FIT, SKIP, TRUNCATE
from ..errors import JobFileError
from ..checks.flags import EXAMPLES_TRIMMED, GUIDELINES_TRIMMED
from ..tasks.base import BadExample, Example, Task
from ..tasks.registry import kind
from ..budget.tokens import TokenCounter

if TYPE_CHECKING:
    import numpy as np  # imported where vectors are ranked: jobs without ``similar`` never load it

_WORD = re.compile(r"\w+")
_STAND_IN = "x"  # a one-token item: a prompt's own tokens split differently around nothing


def normalize(text: str) -> str:
    """What "identical" means between an example and an item: case and spacing aside."""
    return " ".join(text.casefold().split())


# --- loading ---------------------------------------------------------------------------------------

def answer_key(spec) -> str:
    """The key holding an example's gold answer: the task kind's (``prelabel.tasks.registry``)."""
    return kind(spec.kind).answer_key(spec)


def load_examples(path: str | Path, spec, task: Task) -> list[Example]:
    """Read a JSONL examples file: one ``{"text": ..., <answer key>: ...}`` per line.

    Every answer is checked with ``task.check_answer``; the first problem raises ``JobFileError``
    naming the file, the line and the field. Texts identical to an earlier one (``normalize``) are
    dropped: the first wins.
    """
    path = Path(path)
    key = answer_key(spec)
    examples: list[Example] = []
    seen: set[str] = set()
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not line 1's text
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    example = _example(line, line_no, spec, key, task)
                except BadExample as e:
                    raise JobFileError(str(e), path=str(path), line=line_no, field=e.field) from None
                if normalize(example.text) not in seen:
                    seen.add(normalize(example.text))
                    examples.append(example)
    except FileNotFoundError:
        raise JobFileError("examples file not found", path=str(path)) from None
    except UnicodeDecodeError as e:
        raise JobFileError(f"examples file is not UTF-8 ({e.reason})", path=str(path)) from e
    if not examples:
        raise JobFileError(f'no examples: write one JSON object per line, {{"text": ..., "{key}": ...}}',
                           path=str(path))
    return examples


def _example(line: str, line_no: int, spec, key: str, task: Task) -> Example:
    try:
        record = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise BadExample(None, f"invalid JSON ({e.msg})") from None
    except RecursionError:
        raise BadExample(None, "invalid JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise BadExample(None, f'a line is a JSON object: {{"text": ..., "{key}": ...}}')
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadExample("text", "required: the example's text, a non-empty string")
    if key not in record:
        raise BadExample(key, "required field is missing")
    answer = kind(spec.kind).example_answer(spec, text, record[key])
    problem = task.check_answer(answer)
    if problem:
        raise BadExample(key, problem)
    return Example(text, answer, line_no)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object, refused if a key repeats: JSON would keep the last gold answer silently."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise BadExample(key, "duplicate key; JSON would keep only the last one: remove one")
        seen.add(key)
    return dict(pairs)


# --- selection -------------------------------------------------------------------------------------

class ExampleSelector:
    """Picks up to ``k`` examples for an item, most relevant first; never one identical to it.

    ``fixed``: file order. ``diverse``: a greedy cover of the labels, the same for every item.
    ``similar``: cosine similarity, by the vectors given to ``set_vectors`` and ``select`` when
    there are both, else by TF-IDF over words (no model needed).
    """

    def __init__(self, examples: Sequence[Example], strategy: str, k: int,
                 answer_labels: Callable[[Any], set[str]] | None = None) -> None:
        self.examples, self.strategy = list(examples), strategy
        self.k = min(k, len(self.examples))
        self._position = {normalize(e.text): i for i, e in reversed(list(enumerate(self.examples)))}
        self._matrix: np.ndarray | None = None
        count = min(self.k + 1, len(self.examples))  # one spare, for the item that is an example
        if strategy == "similar":
            self._lexical = _Lexical([e.text for e in self.examples])
        elif strategy == "diverse":
            labels = [answer_labels(e.answer) if answer_labels else set() for e in self.examples]
            self._ranked = diverse_order(labels, count)
        elif strategy == "fixed":
            self._ranked = list(range(count))
        else:
            raise ValueError(f"unknown example selection {strategy!r}")

    def set_vectors(self, vectors: Sequence[Sequence[float]]) -> None:
        """The examples' embeddings, in file order: ``select`` then ranks by them."""
        import numpy as np

        matrix = np.asarray([np.asarray(v, dtype=np.float32) for v in vectors], dtype=np.float32)
        if matrix.ndim != 2 or len(matrix) != len(self.examples):
            raise ValueError(f"expected {len(self.examples)} vectors of one length")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self._matrix = matrix / np.where(norms > 0, norms, 1.0)

    def select(self, text: str, vector: Sequence[float] | None = None) -> list[Example]:
        if not self.k:
            return []
        skip = self._position.get(normalize(text))
        if self.strategy != "similar":
            picks = [i for i in self._ranked if i != skip][:self.k]
        else:
            # The item's norm scales every score alike: ranking needs no normalising of it.
            if vector is not None and self._matrix is not None:
                import numpy as np

                scores = self._matrix @ np.asarray(vector, dtype=np.float32)
            else:
                scores = self._lexical.scores(text)
            picks = top_k(scores, self.k, skip)
        return [self.examples[i] for i in picks]


def top_k(scores: np.ndarray, k: int, skip: int | None = None) -> list[int]:
    """The ``k`` highest scores' positions, ties in file order, ``skip`` left out. O(n)."""
    import numpy as np

    scores = np.array(scores, dtype=np.float64)
    if skip is not None:
        scores[skip] = -np.inf
    n = len(scores)
    candidates = np.arange(n)
    if k < n:
        kth = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth)
    ranked = candidates[np.lexsort((candidates, -scores[candidates]))]
    return [int(i) for i in ranked if i != skip][:k]


class _Lexical:
    """TF-IDF over casefolded words, as an inverted index: an item costs its words' postings."""

    def __init__(self, texts: Sequence[str]) -> None:
        import numpy as np

        counts = [Counter(_WORD.findall(t.casefold())) for t in texts]
        df = Counter(term for c in counts for term in c)
        idf = {term: math.log((1 + len(texts)) / (1 + d)) + 1 for term, d in df.items()}
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, c in enumerate(counts):
            weights = {term: tf * idf[term] for term, tf in c.items()}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for term, w in weights.items():
                ids, ws = postings.setdefault(term, ([], []))
                ids.append(i)
                ws.append(w / norm * idf[term])  # the item's side of the idf, folded in once
        self.n = len(texts)
        self._postings = {t: (np.asarray(ids, dtype=np.intp), np.asarray(ws)) for t, (ids, ws) in postings.items()}

    def scores(self, text: str) -> np.ndarray:
        import numpy as np

        scores = np.zeros(self.n)
        for term, tf in Counter(_WORD.findall(text.casefold())).items():
            posting = self._postings.get(term)
            if posting is not None:
                scores[posting[0]] += tf * posting[1]
        return scores


def diverse_order(label_sets: Sequence[set[str]], count: int) -> list[int]:
    """``count`` positions: each pick adds the most labels not yet covered (file order breaks ties);
    once all are covered a new round starts. Examples without labels (instruct) fill what is left,
    evenly spaced over the file."""
    chosen: list[int] = []
    remaining = [i for i, labels in enumerate(label_sets) if labels]
    covered: set[str] = set()
    while len(chosen) < count and remaining:
        gains = [len(label_sets[i] - covered) for i in remaining]
        if max(gains) == 0:
            covered = set()
            continue
        best = gains.index(max(gains))
        pick = remaining.pop(best)
        chosen.append(pick)
        covered |= label_sets[pick]
    taken = set(chosen)
    rest = [i for i in range(len(label_sets)) if i not in taken]
    wanted = min(count - len(chosen), len(rest))
    chosen += [rest[j * len(rest) // wanted] for j in range(wanted)]
    return chosen


# --- fitting the budget ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fit:
    """What goes into one item's prompt under ``budget.max_input_tokens``."""

    examples: list[Example]          # shown, most relevant first
    guidelines: bool
    action: str                      # budget.FIT; TRUNCATE: cut the text to max_text_tokens; SKIP
    max_text_tokens: int
    prompt_tokens: int               # counted when a limit is set, else the sum of the parts
    messages: list[dict] | None      # with FIT: the prompt, built once
    flags: list[str] = field(default_factory=list)


class PromptFitter:
    """Trims a prompt to the budget: examples from the least relevant end, then the guidelines,
    then the item's text (the worker truncates it, or skips the item with ``on_overflow: skip``).

    Each part's tokens are counted once per job; an item costs arithmetic plus one count of the
    prompt that is kept (the parts can merge at their boundaries).
    """

    def __init__(self, task: Task, counter: TokenCounter, examples: Sequence[Example],
                 max_input_tokens: int | None, on_overflow: str) -> None:
        self.task, self.counter = task, counter
        self.limit, self.on_overflow = max_input_tokens, on_overflow
        stand_in = counter.count(_STAND_IN)
        bare = counter.count_messages(task.messages(_STAND_IN, (), guidelines=False))
        self._fixed = {True: counter.count_messages(task.messages(_STAND_IN)) - stand_in, False: bare - stand_in}
        # Measured without the guidelines, which an example's cost does not depend on: cheaper to count.
        self._example_tokens = {e.text: counter.count_messages(task.messages(_STAND_IN, [e], guidelines=False)) - bare
                                for e in examples}

    def fit(self, text: str, text_tokens: int, examples: Sequence[Example]) -> Fit:
        shown, guidelines = list(examples), True
        total = self._fixed[True] + sum(self._example_tokens[e.text] for e in shown) + text_tokens
        if self.limit is None:
            return Fit(shown, True, FIT, text_tokens, total, self.task.messages(text, shown, True))
        limit = self.limit
        while True:
            while total > limit and shown:
                total -= self._example_tokens[shown.pop().text]
            if total > limit and guidelines and self._fixed[False] < self._fixed[True]:
                guidelines = False
                total -= self._fixed[True] - self._fixed[False]
            flags = ([EXAMPLES_TRIMMED] if len(shown) < len(examples) else []) + (
                [] if guidelines else [GUIDELINES_TRIMMED])
            if total > limit:  # only the item's text is left to cut
                room = text_tokens - (total - limit)
                if self.on_overflow == "skip" or room <= 0:
                    return Fit([], guidelines, SKIP, 0, 0, None, flags)
                return Fit([], guidelines, TRUNCATE, room, self._fixed[guidelines] + room, None, flags)
            messages = self.task.messages(text, shown, guidelines)
            counted = self.counter.count_messages(messages)
            if counted <= limit:
                return Fit(shown, guidelines, FIT, text_tokens, counted, messages, flags)
            total = counted  # together the parts cost more than apart: trim on from the count
