"""Reconciliation's decisions: after a crash between any two steps, never a second batch for a chunk.

The direct tests pin each decision; the model test drives a minimal executor (as the real one
will: record the intent, upload, record, create, record, poll, download, commit) against an
in-memory provider, kills it at every step in turn, runs ticks again, and counts: one batch per
chunk, no line answered twice, every line committed.
"""
from __future__ import annotations

import itertools

import pytest

from prelabel.batch.reconcile import (Collect, Create, DeleteFile, Intent, Nothing, Orphan, Poll, RemoteBatch,
                                      RemoteFile, Stage, Upload, Wait, batch_metadata, decide, file_name,
                                      reconcile, retry_chunk)

JOB = "job1"


def batch(id_: str, chunk: str, status: str = "in_progress", created_at: int = 1, job: str = JOB) -> RemoteBatch:
    return RemoteBatch(id_, status, "file-x", created_at, job, chunk)


def test_a_planned_chunk_with_nothing_at_the_provider_is_uploaded():
    assert decide(JOB, Intent("0", Stage.PLANNED), [], []) == [Upload("0")]


def test_a_file_uploaded_before_the_crash_is_used_not_uploaded_again():
    files = [RemoteFile("file-1", file_name(JOB, "0"), 5), RemoteFile("file-9", file_name(JOB, "1"), 5)]
    assert decide(JOB, Intent("0", Stage.PLANNED), files, []) == [Create("0", "file-1", adopted=True)]
    recorded = Intent("0", Stage.UPLOADED, file_id="file-1")
    assert decide(JOB, recorded, files, []) == [Create("0", "file-1", adopted=False)]


def test_a_second_upload_of_the_same_chunk_is_deleted_and_the_recorded_one_kept():
    files = [RemoteFile("file-2", file_name(JOB, "0"), 1), RemoteFile("file-1", file_name(JOB, "0"), 9)]
    actions = decide(JOB, Intent("0", Stage.UPLOADED, file_id="file-1"), files, [])
    assert actions == [Create("0", "file-1"), DeleteFile("0", "file-2")]
    # unrecorded: the first uploaded is kept
    actions = decide(JOB, Intent("0", Stage.PLANNED), files, [])
    assert actions == [Create("0", "file-2", adopted=True), DeleteFile("0", "file-1")]


def test_a_batch_created_before_the_crash_is_adopted_by_its_metadata():
    remote = batch("b1", "0")
    files = [RemoteFile("file-1", file_name(JOB, "0"))]
    for stage in (Stage.PLANNED, Stage.UPLOADED):
        assert decide(JOB, Intent("0", stage, file_id="file-1"), files, [remote]) == [Wait("0", remote, adopted=True)]
    done = batch("b1", "0", "completed")
    assert decide(JOB, Intent("0", Stage.UPLOADED), files, [done]) == [Collect("0", done, adopted=True)]


def test_another_jobs_batch_for_the_same_chunk_name_is_not_adopted():
    assert decide(JOB, Intent("0", Stage.PLANNED), [], [batch("b1", "0", job="other")]) == [Upload("0")]


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
def test_a_batch_in_flight_is_waited_on(status):
    remote = batch("b1", "0", status)
    assert decide(JOB, Intent("0", Stage.SUBMITTED, "f", "b1"), [], [remote]) == [Wait("0", remote)]


@pytest.mark.parametrize("status,partial", [("completed", False), ("expired", True), ("cancelled", True),
                                            ("failed", True)])
def test_a_finished_batch_is_collected_and_partial_ones_resubmit_the_rest(status, partial):
    remote = batch("b1", "0", status)
    [action] = decide(JOB, Intent("0", Stage.SUBMITTED, "f", "b1"), [], [remote])
    assert action == Collect("0", remote) and action.partial is partial


def test_a_recorded_batch_missing_from_the_listing_is_polled_and_a_gone_one_resubmitted():
    intent = Intent("0", Stage.SUBMITTED, "file-1", "b1")
    assert decide(JOB, intent, [], []) == [Poll("0", "b1")]
    files = [RemoteFile("file-1", file_name(JOB, "0"))]
    assert decide(JOB, intent, files, [], gone={"b1"}) == [Create("0", "file-1")]
    assert decide(JOB, intent, [], [], gone={"b1"}) == [Upload("0")]


def test_two_batches_for_one_chunk_keep_the_recorded_one_and_report_the_other():
    recorded, extra = batch("b2", "0", "completed", 2), batch("b1", "0", "completed", 1)
    actions = decide(JOB, Intent("0", Stage.SUBMITTED, "f", "b2"), [], [extra, recorded])
    assert actions == [Collect("0", recorded), Orphan(extra)]
    # unrecorded: the first one that did not fail
    failed, later = batch("b1", "0", "failed", 1), batch("b2", "0", "in_progress", 2)
    assert decide(JOB, Intent("0", Stage.UPLOADED), [], [failed, later]) == [Wait("0", later, True), Orphan(failed)]


def test_collected_chunks_need_nothing_and_unknown_batches_are_orphans():
    stray = batch("b9", "7")
    actions = reconcile(JOB, {"0": Intent("0", Stage.COLLECTED, "f", "b1")}, [], [batch("b1", "0", "completed"), stray])
    assert actions == [Nothing("0"), Orphan(stray)]


def test_names_and_retry_chunks():
    assert file_name(JOB, "3") == "prelabel-job1-3.jsonl"
    assert batch_metadata(JOB, "3") == {"prelabel_job": JOB, "prelabel_chunk": "3"}
    assert [retry_chunk(c) for c in ("7", "7.1", "7.9", "a.b")] == ["7.1", "7.2", "7.10", "a.b.1"]


# --- the model: a minimal executor killed at every step ------------------------------------------

class Crash(Exception):
    pass


class FakeProvider:
    """Files and batches in memory; a batch ends after the tick following its creation; the first
    expires half done."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.files: dict[str, tuple[str, list[str]]] = {}   # id -> (filename, custom ids)
        self.batches: dict[str, dict] = {}
        self.answered: dict[str, int] = {}                   # custom id -> times a batch answered it
        self.expire_next = True

    def upload(self, chunk: str, keys: list[str]) -> str:
        file_id = f"file-{next(self.ids)}"
        self.files[file_id] = (file_name(JOB, chunk), keys)
        return file_id

    def create(self, chunk: str, file_id: str) -> str:
        batch_id = f"batch-{next(self.ids)}"
        self.batches[batch_id] = {"chunk": chunk, "file": file_id, "status": "in_progress", "created": len(self.batches),
                                  "output": []}
        return batch_id

    def finish_all(self) -> None:
        for b in self.batches.values():
            b["age"] = b.get("age", -1) + 1
            if b["status"] != "in_progress" or b["age"] < 1:  # each batch is seen in flight by one tick
                continue
            keys = self.files[b["file"]][1]
            done = keys[: len(keys) // 2] if self.expire_next and len(keys) > 1 else keys
            b["status"] = "expired" if len(done) < len(keys) else "completed"
            self.expire_next = False
            b["output"] = list(done)
            for key in done:
                self.answered[key] = self.answered.get(key, 0) + 1

    def remote(self, batch_id: str) -> RemoteBatch:
        b = self.batches[batch_id]
        return RemoteBatch(batch_id, b["status"], b["file"], b["created"], JOB, b["chunk"])

    def list_files(self) -> list[RemoteFile]:
        return [RemoteFile(i, name, n) for n, (i, (name, _)) in enumerate(self.files.items())]

    def list_batches(self) -> list[RemoteBatch]:
        return [self.remote(i) for i in self.batches]


class FakeExecutor:
    """What the real executor does with each action, a crash point after every provider call
    and inside the two multi-part steps (download, commit)."""

    STEPS = ("after record-intent", "after upload", "after create", "after poll", "mid-download",
             "after download", "mid-commit")

    def __init__(self, provider: FakeProvider, chunks: dict[str, list[str]]) -> None:
        self.provider = provider
        self.intents: dict[str, Intent] = {}
        self.lines: dict[str, list[str]] = {}    # chunk -> its custom ids (the store's record)
        self.committed: dict[str, int] = {}      # custom id -> times committed (the cache: idempotent)
        self.pending = dict(chunks)
        self.crash_at: tuple[str, int] | None = None
        self.seen: dict[str, int] = {}

    def point(self, step: str) -> None:
        self.seen[step] = self.seen.get(step, 0) + 1
        if self.crash_at == (step, self.seen[step]):
            raise Crash(step)

    def tick(self) -> None:
        for chunk, keys in list(self.pending.items()):  # a new chunk's intent is recorded before anything is sent
            self.intents[chunk] = Intent(chunk, Stage.PLANNED)
            self.lines[chunk] = keys
            del self.pending[chunk]
            self.point("after record-intent")
        gone: set[str] = set()
        for action in reconcile(JOB, self.intents, self.provider.list_files(), self.provider.list_batches(), gone):
            self.apply(action)

    def apply(self, action) -> None:
        p = self.provider
        if isinstance(action, Upload):
            file_id = p.upload(action.chunk, self.lines[action.chunk])
            self.point("after upload")
            self.intents[action.chunk] = Intent(action.chunk, Stage.UPLOADED, file_id)
        elif isinstance(action, Create):
            batch_id = p.create(action.chunk, action.file_id)
            self.point("after create")
            self.intents[action.chunk] = Intent(action.chunk, Stage.SUBMITTED, action.file_id, batch_id)
        elif isinstance(action, Wait):
            self.point("after poll")
            if action.adopted:
                self.intents[action.chunk] = Intent(action.chunk, Stage.SUBMITTED, action.batch.input_file_id,
                                                    action.batch.id)
        elif isinstance(action, Collect):
            output = p.batches[action.batch.id]["output"]
            self.point("mid-download")
            self.point("after download")
            for n, key in enumerate(output):
                self.committed[key] = self.committed.get(key, 0) + 1
                if n == len(output) // 2:
                    self.point("mid-commit")
            rest = [k for k in self.lines[action.chunk] if k not in set(output)]
            # one transaction: this chunk collected, and the rest's intent recorded
            self.intents[action.chunk] = Intent(action.chunk, Stage.COLLECTED, action.batch.input_file_id,
                                                action.batch.id)
            if rest:
                child = retry_chunk(action.chunk)
                self.intents[child] = Intent(child, Stage.PLANNED)
                self.lines[child] = rest
        elif isinstance(action, DeleteFile):
            del p.files[action.file_id]

    def run(self, ticks: int = 12) -> None:
        for _ in range(ticks):
            try:
                self.tick()
            except Crash:
                pass
            self.provider.finish_all()
            if not self.pending and all(i.stage is Stage.COLLECTED for i in self.intents.values()):
                return
        raise AssertionError(f"not done after {ticks} ticks: {self.intents}")


CHUNKS = {"0": [f"k{n}" for n in range(6)], "1": [f"k{n}" for n in range(6, 10)]}


def check(executor: FakeExecutor) -> None:
    keys = [k for ks in CHUNKS.values() for k in ks]
    per_chunk: dict[str, int] = {}
    for b in executor.provider.batches.values():
        per_chunk[b["chunk"]] = per_chunk.get(b["chunk"], 0) + 1
    assert all(count == 1 for count in per_chunk.values()), per_chunk  # never two batches for one chunk
    assert set(per_chunk) == set(executor.intents)                     # chunks plus their retries
    assert all(executor.provider.answered.get(k) == 1 for k in keys), executor.provider.answered  # none paid twice
    assert set(executor.committed) == set(keys)                        # none lost


def test_without_a_crash_every_line_is_answered_once_and_the_expired_rest_resubmitted():
    executor = FakeExecutor(FakeProvider(), CHUNKS)
    executor.run()
    check(executor)
    assert sorted(executor.intents) == ["0", "0.1", "1"]


@pytest.mark.parametrize("step", FakeExecutor.STEPS)
@pytest.mark.parametrize("occurrence", [1, 2, 3])
def test_a_crash_at_any_step_makes_no_second_batch_and_pays_no_line_twice(step, occurrence):
    executor = FakeExecutor(FakeProvider(), CHUNKS)
    executor.crash_at = (step, occurrence)
    executor.run()
    check(executor)
    if occurrence == 1:
        assert executor.seen[step] >= 1  # it did crash there
