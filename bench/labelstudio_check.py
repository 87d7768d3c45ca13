"""Prove a prelabel export imports into a real Label Studio with every prediction visible.

Label Studio imports a malformed or unselected prediction without complaint and then simply
does not show it, so unit tests alone cannot tell whether reviewers will see the drafts. This
script creates a throwaway project from ``labelstudio_config.xml``, imports
``labelstudio.json`` through the REST API and checks, against the file:

* the task count, and the order (task ids follow the file: least certain first);
* every task that had a prediction has exactly one stored, with the same model_version, score
  and result, valid against the config as Label Studio holds it; tasks without one have none;
* each result, matched by id, field by field for every task kind: a classify or multi-label
  result's choices, an NER span's start, end, text, labels and score (and its text is the stored
  task text at start:end), an instruct pair's textarea values; a coverage line per result type
  says what the file exercised (e.g. how many multi-label results have several choices);
* reviewers will see them pre-filled: the project has ``show_collab_predictions`` on,
  ``reveal_preannotations_interactively`` off and ``model_version`` equal to the file's single
  model_version. The label stream serves only predictions whose model_version equals the
  project's; the quick view gets all of a task's predictions and pre-fills the one of the
  project's model_version, else the first. So "every stored prediction has the file's one
  model_version, and it is the project's" is what makes every one visible. Then, through the
  endpoints the labeling UI calls: every task view (``/api/tasks/<id>``) returns exactly the
  file's prediction, and the label stream (``/api/projects/<id>/next``) hands tasks out in the
  file's order, the first one with a prediction pre-filled with it (the tasks before it are
  skipped, in the throwaway project).

It prints a short summary and exits 1 on any mismatch (2 on bad usage or an unreachable server).
The project is deleted afterwards unless ``--keep`` (to open it in the browser).
It is meant for sample exports (tens to a few thousand tasks): it reads the whole file and asks
for each task's view once.

Usage::

    python bench/labelstudio_check.py OUT_DIR [--url URL] [--token TOKEN] [--keep]

    OUT_DIR   folder holding labelstudio.json and labelstudio_config.xml
    --url     default $LABEL_STUDIO_URL, else http://127.0.0.1:8089
    --token   default $LABEL_STUDIO_API_KEY: a legacy token (sent as "Token ...") or a personal
              access token, i.e. a JWT refresh token (exchanged at /api/token/refresh for a
              "Bearer ..." access token)

Label Studio is heavy and not a project dependency; run it from its own venv, outside the repo,
with everything that phones home turned off::

    python3 -m venv /tmp/lsenv && /tmp/lsenv/bin/pip install label-studio
    SENTRY_DSN= FRONTEND_SENTRY_DSN= COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false \\
    fflag_feat_utc_210_prediction_validation_15082025=true \\
    LABEL_STUDIO_USERNAME=check@example.com LABEL_STUDIO_PASSWORD=check-password \\
    LABEL_STUDIO_USER_TOKEN=prelabel-check-token \\
        /tmp/lsenv/bin/label-studio start --no-browser --internal-host 127.0.0.1 --port 8089 \\
        --data-dir /tmp/lsdata --enable-legacy-api-token
    LABEL_STUDIO_API_KEY=prelabel-check-token python bench/labelstudio_check.py out/my-job

``--enable-legacy-api-token`` lets the fixed ``LABEL_STUDIO_USER_TOKEN`` work as a
``Token`` (legacy tokens are off for new organizations since 1.18). The ``fflag_...`` variable
makes Label Studio refuse an import whose predictions fail its own validator instead of only
logging it, a second opinion on ours; without it a bad prediction imports silently.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed
from prelabel.outputs.labelstudio import parse_config, validate_prediction  # noqa: E402

TASKS_FILE = "labelstudio.json"
CONFIG_FILE = "labelstudio_config.xml"
DEFAULT_URL = "http://127.0.0.1:8089"


class CheckError(Exception):
    """The server could not be used at all (unreachable, refused, unexpected answer)."""


class Client:
    """The few Label Studio REST calls the check needs, over the standard library only."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.auth = self._authorization(token)

    def _authorization(self, token: str) -> str:
        if token.count(".") == 2:  # a JWT: a personal access (refresh) token
            access = self.call("POST", "/api/token/refresh", {"refresh": token}, auth=False)["access"]
            return f"Bearer {access}"
        return f"Token {token}"

    def call(self, method: str, path: str, body=None, *, raw: bytes | None = None, auth: bool = True):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:2000]
            raise CheckError(f"{method} {path}: HTTP {e.code}: {detail}") from e
        except urllib.error.URLError as e:
            raise CheckError(f"{method} {path}: cannot reach {self.url}: {e.reason}") from e
        return json.loads(text) if text else None


def load_export(out_dir: Path) -> tuple[list[dict], str]:
    tasks = json.loads((out_dir / TASKS_FILE).read_text(encoding="utf-8"))
    config = (out_dir / CONFIG_FILE).read_text(encoding="utf-8")
    return tasks, config


def file_model_versions(tasks: list[dict]) -> set:
    return {p.get("model_version") for t in tasks for p in t.get("predictions", [])}


def import_tasks(client: Client, project_id: int, out_dir: Path) -> dict:
    raw = (out_dir / TASKS_FILE).read_bytes()
    answer = client.call("POST", f"/api/projects/{project_id}/import?return_task_ids=true", raw=raw)
    if "import" in answer:  # Enterprise imports in the background; poll until it settles
        for _ in range(600):
            state = client.call("GET", f"/api/projects/{project_id}/imports/{answer['import']}")
            if state.get("status") in ("completed", "failed"):
                if state["status"] == "failed":
                    raise CheckError(f"import failed: {state.get('traceback') or state}")
                return state
            time.sleep(1)
        raise CheckError("import did not finish within 10 minutes")
    return answer


def list_tasks(client: Client, project_id: int) -> list[dict]:
    tasks, page = [], 1
    while True:
        answer = client.call("GET", f"/api/tasks?project={project_id}&page={page}&page_size=100")
        tasks.extend(answer["tasks"])
        if len(tasks) >= answer["total"] or not answer["tasks"]:
            return tasks
        page += 1


def _score_differs(got, want) -> bool:
    return (want is None) != (got is None) or (want is not None and abs(got - want) > 1e-9)


def same_prediction(stored: dict, expected: dict) -> list[str]:
    problems = []
    if stored.get("model_version") != expected.get("model_version"):
        problems.append(f"model_version is {stored.get('model_version')!r}, "
                        f"the file has {expected.get('model_version')!r}")
    if _score_differs(stored.get("score"), expected.get("score")):
        problems.append(f"score is {stored.get('score')!r}, the file has {expected.get('score')!r}")
    return problems + result_differences(stored.get("result") or [], expected.get("result") or [])


def result_differences(stored: list[dict], expected: list[dict]) -> list[str]:
    """Each result of the file against the stored one of the same id, field by field, so a
    mismatch names what changed: a span's start/end/text/labels, the choices, a textarea's text."""
    problems = []
    got_by_id = {r.get("id"): r for r in stored}
    if len(got_by_id) != len(stored):
        problems.append("stored results repeat an id")
    for want in expected:
        rid, got = want.get("id"), got_by_id.pop(want.get("id"), None)
        if got is None:
            problems.append(f"result {rid}: missing ({want.get('type')} {want.get('value')!r})")
            continue
        for key in sorted((set(want) | set(got)) - {"value", "score"}):
            if got.get(key) != want.get(key):
                problems.append(f"result {rid}: {key} is {got.get(key)!r}, the file has {want.get(key)!r}")
        if _score_differs(got.get("score"), want.get("score")):
            problems.append(f"result {rid}: score is {got.get('score')!r}, the file has {want.get('score')!r}")
        got_value, want_value = got.get("value") or {}, want.get("value") or {}
        for key in sorted(set(want_value) | set(got_value)):
            differs = (_score_differs(got_value.get(key), want_value.get(key)) if key == "score"
                       else got_value.get(key) != want_value.get(key))
            if differs:
                problems.append(f"result {rid}: value.{key} is {got_value.get(key)!r}, "
                                f"the file has {want_value.get(key)!r}")
    problems.extend(f"result {rid}: not in the file ({r.get('type')} {r.get('value')!r})"
                    for rid, r in got_by_id.items())
    return problems


def coverage(predictions: list[dict]) -> str:
    """What the stored predictions exercise, per result type, so a pass is not a vacuous one."""
    results = [r for p in predictions for r in p.get("result") or []]
    parts = []
    choices = [r["value"].get("choices") or [] for r in results if r.get("type") == "choices"]
    if choices:
        parts.append(f"{len(choices)} choices results ({sum(len(c) > 1 for c in choices)} with several choices)")
    spans = [r for r in results if r.get("type") == "labels"]
    if spans:
        labels = sorted({label for r in spans for label in r["value"].get("labels") or []})
        parts.append(f"{len(spans)} NER spans ({', '.join(labels)}; "
                     f"{sum(r.get('score') is not None for r in spans)} with a score)")
    texts = [r for r in results if r.get("type") == "textarea"]
    if texts:
        names = sorted({r.get("from_name") for r in texts})
        parts.append(f"{len(texts)} textarea values ({', '.join(names)})")
    return "; ".join(parts) or "no results"


def walk_label_stream(client: Client, pid: int, file_tasks: list[dict], expected: dict) -> list[str]:
    """Take tasks from the label stream as a reviewer would, skipping those without a prediction,
    up to the first one that has one: it must come pre-filled with the file's prediction."""
    problems, order = [], []
    for _ in range(len(file_tasks)):
        nxt = client.call("GET", f"/api/projects/{pid}/next")
        ref, got = nxt["data"].get("ref_id"), nxt.get("predictions") or []
        order.append(ref)
        want = expected.get(ref)
        if want is None:
            if got:
                problems.append(f"label stream: {ref} comes with a prediction the file does not have")
            # Skipped (cancelled) tasks leave this reviewer's queue, so the stream moves on.
            client.call("POST", f"/api/tasks/{nxt['id']}/annotations?project={pid}",
                        {"result": [], "was_cancelled": True})
            continue
        print(f"label stream: took {len(order)} task(s) {order[:6]}{'...' if len(order) > 6 else ''}; "
              f"{ref} comes with {len(got)} prediction(s)")
        if len(got) != 1:
            problems.append(f"label stream: {ref} comes with {len(got)} predictions, expected 1")
        else:
            problems.extend(f"label stream: {ref}: {e}" for e in same_prediction(got[0], want))
        break
    file_order = [t["data"]["ref_id"] for t in file_tasks][:len(order)]
    if order != file_order:
        problems.append(f"label stream order {order} is not the file's {file_order}")
    return problems


def check(client: Client, out_dir: Path, keep: bool) -> list[str]:
    file_tasks, config = load_export(out_dir)
    versions = file_model_versions(file_tasks)
    expected = {t["data"]["ref_id"]: (t.get("predictions") or [None])[0] for t in file_tasks}
    n_predictions = sum(p is not None for p in expected.values())
    problems: list[str] = []
    if len(versions) > 1:
        # Only predictions of the project's one model_version are served; the rest stay hidden.
        problems.append(f"the file mixes model versions {sorted(map(str, versions))}: "
                        f"reviewers would see only one of them")
    version = next(iter(versions)) if len(versions) == 1 else None

    ls_version = client.call("GET", "/api/version")
    print(f"Label Studio {ls_version.get('release') or ls_version.get('label-studio-os-package', {}).get('version')}"
          f" at {client.url}")
    project = client.call("POST", "/api/projects", {
        "title": f"prelabel check {out_dir.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"[:50],
        "label_config": config,
        "show_collab_predictions": True,
    })
    pid = project["id"]
    print(f"project {pid}: {client.url}/projects/{pid}/data")
    try:
        try:
            answer = import_tasks(client, pid, out_dir)
        except CheckError as e:  # refused: with prediction validation on, one bad prediction does it
            return problems + [f"import refused: {e}"]
        print(f"imported: {answer.get('task_count')} tasks, {answer.get('prediction_count')} predictions "
              f"(file: {len(file_tasks)} tasks, {n_predictions} predictions)")
        if answer.get("task_count") != len(file_tasks):
            problems.append(f"import made {answer.get('task_count')} tasks, the file has {len(file_tasks)}")
        if answer.get("prediction_count") != n_predictions:
            problems.append(f"import stored {answer.get('prediction_count')} predictions, "
                            f"the file has {n_predictions}")

        # Stored: exactly the file's prediction on each task, none elsewhere.
        tasks = list_tasks(client, pid)
        ref_of = {t["id"]: t["data"].get("ref_id") for t in tasks}
        text_of = {t["data"].get("ref_id"): t["data"].get("text") for t in tasks}
        if len(tasks) != len(file_tasks):
            problems.append(f"project has {len(tasks)} tasks, the file has {len(file_tasks)}")
        in_id_order = [ref_of[i] for i in sorted(ref_of)]
        if in_id_order != [t["data"]["ref_id"] for t in file_tasks]:
            problems.append("task ids do not follow the file's order")
        stored: dict[str, list[dict]] = {}
        for p in client.call("GET", f"/api/predictions?project={pid}"):
            stored.setdefault(ref_of.get(p["task"]), []).append(p)
        for ref, want in expected.items():
            got = stored.get(ref, [])
            if want is None:
                if got:
                    problems.append(f"{ref}: {len(got)} predictions stored, the file has none")
            elif len(got) != 1:
                problems.append(f"{ref}: {len(got)} predictions stored, expected 1")
            else:
                problems.extend(f"{ref}: {e}" for e in same_prediction(got[0], want))

        # Displayable: valid against the config as Label Studio holds it (a default Label Studio
        # stores an invalid prediction and returns it unchanged; it just never renders), spans
        # against the task text as it stores it.
        project = client.call("GET", f"/api/projects/{pid}")
        schema = parse_config(project["label_config"])
        for ref, got in stored.items():
            for p in got:
                problems.extend(f"{ref}: stored prediction: {e}"
                                for e in validate_prediction(p, schema, text_of.get(ref)))
        print(f"stored: {coverage([p for got in stored.values() for p in got])}")

        # Visible: the project settings that select what reviewers see, then what the UI gets.
        print(f"project settings: show_collab_predictions={project.get('show_collab_predictions')} "
              f"model_version={project.get('model_version')!r} "
              f"reveal_preannotations_interactively={project.get('reveal_preannotations_interactively')}")
        if project.get("show_collab_predictions") is not True:
            problems.append("show_collab_predictions is off: reviewers will not see predictions")
        if project.get("reveal_preannotations_interactively"):
            problems.append("reveal_preannotations_interactively is on: predictions start hidden")
        if version is not None and project.get("model_version") != version:
            problems.append(f"project model_version is {project.get('model_version')!r}, not the "
                            f"file's {version!r}: its predictions are not served to reviewers")

        shown = 0
        for task_id, ref in ref_of.items():
            view = client.call("GET", f"/api/tasks/{task_id}?project={pid}")
            got, want = view.get("predictions") or [], expected.get(ref)
            if want is None:
                continue
            if len(got) != 1:
                problems.append(f"{ref}: the task view shows {len(got)} predictions, expected 1")
            else:
                errors = same_prediction(got[0], want)
                problems.extend(f"{ref}: task view: {e}" for e in errors)
                shown += not errors
        print(f"task view: {shown}/{n_predictions} predictions served as in the file")

        if n_predictions:
            problems.extend(walk_label_stream(client, pid, file_tasks, expected))
    finally:
        if keep:
            print(f"kept project {pid}")
        else:
            client.call("DELETE", f"/api/projects/{pid}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help=f"folder with {TASKS_FILE} and {CONFIG_FILE}")
    parser.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", DEFAULT_URL))
    parser.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"))
    parser.add_argument("--keep", action="store_true", help="keep the project to look at it")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no API token: pass --token or set LABEL_STUDIO_API_KEY")
    for name in (TASKS_FILE, CONFIG_FILE):
        if not (args.out_dir / name).is_file():
            parser.error(f"{args.out_dir / name} does not exist; run an export first")
    try:
        problems = check(Client(args.url, args.token), args.out_dir, args.keep)
    except CheckError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 2
    if problems:
        print(f"FAILED: {len(problems)} mismatches")
        for p in problems[:50]:
            print(f"  {p}")
        return 1
    print("OK: every task imported; every prediction stored and shown to reviewers as in the file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
