"""Few-shot examples for one run: chosen for each item (by the endpoint's embeddings when the job
names an embedding model, else lexically), then trimmed with the rest of the prompt to the budget.

The embedding requests themselves go through the executor (``embed``), which owns the budget. A
leased batch is embedded in one request while the batch before it is being labelled; an item (its
pipeline's ``Embed`` request) waits for its batch's vectors only if they are not there yet.
``choose`` is the pure part the item's pipeline calls.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence

from .examples import ExampleSelector, Fit, PromptFitter, load_examples
from ..store import LeasedItem

# texts -> (one vector or None per text, whether the endpoint has embeddings at all)
Embed = Callable[[list[str], str], Awaitable[tuple[list | None, bool]]]


class FewShot:
    def __init__(self, spec, task, counter) -> None:
        t = spec.task
        self.examples = load_examples(t.examples, t, task)
        self.selector = ExampleSelector(self.examples, t.example_selection, t.max_examples, task.answer_labels)
        self.fitter = PromptFitter(task, counter, self.examples, spec.budget.max_input_tokens,
                                   spec.budget.on_overflow)
        self.embedding_model = t.embedding_model if t.example_selection == "similar" else None
        self.by_vectors = False  # the examples have vectors: each item asks for its own (None: lexical)
        self._vectors: dict[int, object] = {}  # item seq -> its embedding, until the item is fitted
        self._batches: dict[int, asyncio.Future] = {}  # item seq -> its batch's embedding request

    @classmethod
    def for_job(cls, spec, task, counter) -> "FewShot | None":
        t = spec.task
        return cls(spec, task, counter) if t.examples is not None and t.max_examples else None

    async def start(self, embed: Embed) -> None:
        """Embed the examples once; without all their vectors, rank lexically for the whole run."""
        if self.embedding_model:
            vectors, available = await embed([e.text for e in self.examples], self.embedding_model)
            if available and vectors is not None and all(v is not None for v in vectors):
                self.selector.set_vectors(vectors)
                self.by_vectors = True
            else:
                self.embedding_model = None

    def add(self, items: Sequence[LeasedItem], embed: Embed) -> None:
        """Start embedding a leased batch in one request (an item left without a vector is ranked
        lexically)."""
        if self.embedding_model and items:
            batch = asyncio.ensure_future(self._embed_batch(items, embed, self.embedding_model))
            self._batches.update((item.seq, batch) for item in items)

    async def _embed_batch(self, items: Sequence[LeasedItem], embed: Embed, model: str) -> None:
        vectors, available = await embed([item.text for item in items], model)
        if not available:
            self.embedding_model = None
        elif vectors is not None:
            self._vectors.update((item.seq, v) for item, v in zip(items, vectors) if v is not None)

    async def ready(self) -> None:
        """Wait until every embedding request started is answered (a batch executor, which plans
        against the budget what those requests leave of it)."""
        for batch in set(self._batches.values()):
            await asyncio.shield(batch)

    async def vector(self, item: LeasedItem):
        """The item's vector, once its batch's request is answered; None if it has none."""
        batch = self._batches.pop(item.seq, None)
        if batch is not None:
            await asyncio.shield(batch)  # several items wait on one request: none may cancel it
        return self._vectors.pop(item.seq, None)

    def choose(self, text: str, text_tokens: int, vector=None) -> Fit:
        """The examples for an item (by its vector, else lexically), trimmed with its prompt."""
        return self.fitter.fit(text, text_tokens, self.selector.select(text, vector))

    def close(self) -> None:
        """Cancel embedding requests of a run that stops."""
        for batch in set(self._batches.values()):
            batch.cancel()
        self._batches.clear()
