"""Reviewers' corrections through a real Label Studio and back: `review import` and `review report`.

For every task kind (the example jobs sentiment, multilabel, ner, instruct, run on the simulator),
this script imports prelabel's export into a throwaway Label Studio project, then annotates every
task through Label Studio's REST API the way reviewers would: most drafts accepted as pre-filled,
every fourth one corrected (classify: another label; multilabel: a label added or removed; ner: a
span retyped, removed, or one added; instruct: the response edited, or the task skipped, which
rejects the pair), one annotation revised after it was first submitted, and one annotation that
breaks the schema where Label Studio accepts it. It exports the project through the API, runs
`prelabel review import` (twice: the second must change nothing) and `prelabel review report`, and
checks the report's figures against the corrections it made, computed here independently.

Usage (Label Studio started as bench/labelstudio_check.py's docstring says)::

    LABEL_STUDIO_API_KEY=TOKEN python bench/review_roundtrip.py [--url URL] [--work DIR] [--keep]

Exits 1 on any mismatch, 2 when Label Studio cannot be reached.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.labelstudio_check import DEFAULT_URL, CheckError, Client, import_tasks, list_tasks  # noqa: E402

JOBS = {"classify": "sentiment", "multilabel": "multilabel", "ner": "ner", "instruct": "instruct"}
PRELABEL = [sys.executable, "-m", "prelabel"]


def prelabel(*args: str, db: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([*PRELABEL, *args, "--db", str(db)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise CheckError(f"prelabel {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def job_id_of(db: Path, name: str) -> str:
    rows = json.loads(subprocess.run([*PRELABEL, "status", "--json", "--db", str(db)], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout)["jobs"]
    return next(r["job_id"] for r in rows if r["job_id"].startswith(name + "-"))


# --- what a reviewer does to one task -----------------------------------------------------------

def _ids(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "score"} for r in results]


def correct(kind: str, labels: list[str], task: dict, n: int) -> tuple[list[dict] | None, object]:
    """The corrected result list and the label it says (None result: the task is skipped)."""
    pred = (task["predictions"] or [{"result": []}])[0]["result"]
    result = _ids(copy.deepcopy(pred))
    text = task["data"]["text"]
    if kind == "classify":
        old = result[0]["value"]["choices"][0] if result else labels[0]
        new = labels[(labels.index(old) + 1) % len(labels)]
        return [{"id": "rv1", "from_name": "label", "to_name": "text", "type": "choices",
                 "value": {"choices": [new]}}], new
    if kind == "multilabel":
        chosen = result[0]["value"]["choices"] if result else []
        flip = labels[n % len(labels)]
        new = [x for x in chosen if x != flip] if flip in chosen else [*chosen, flip]
        return ([{"id": "rv1", "from_name": "labels", "to_name": "text", "type": "choices",
                  "value": {"choices": new}}] if new else []), new
    if kind == "ner":
        if result and n % 3 == 0:  # retype the first span
            first = result[0]["value"]
            first["labels"] = [labels[(labels.index(first["labels"][0]) + 1) % len(labels)]]
        elif result and n % 3 == 1:  # remove the last one
            result = result[:-1]
        else:  # add one over the first word no span covers
            word_end = text.index(" ") if " " in text else len(text)
            if not any(r["value"]["start"] < word_end for r in result):
                result.append({"id": "rv-add", "from_name": "label", "to_name": "text", "type": "labels",
                               "value": {"start": 0, "end": word_end, "text": text[:word_end],
                                         "labels": [labels[0]]}})
            elif result:
                result = result[1:]
        spans = sorted(({"start": r["value"]["start"], "end": r["value"]["end"], "label": r["value"]["labels"][0]}
                        for r in result), key=lambda s: (s["start"], s["end"], s["label"]))
        return result, spans
    if n % 2:
        return None, None  # skipped: the pair is rejected
    for r in result:
        if r["from_name"] == "response":
            r["value"]["text"] = [r["value"]["text"][0] + " (checked against the passage)"]
    pair = {r["from_name"]: r["value"]["text"][0] for r in result}
    return result, pair


def draft_label(kind: str, task: dict):
    pred = (task["predictions"] or [{"result": []}])[0]["result"]
    if kind == "classify":
        return pred[0]["value"]["choices"][0] if pred else None
    if kind == "multilabel":
        return pred[0]["value"]["choices"] if pred else []
    if kind == "ner":
        return sorted(({"start": r["value"]["start"], "end": r["value"]["end"], "label": r["value"]["labels"][0]}
                       for r in pred), key=lambda s: (s["start"], s["end"], s["label"]))
    return {r["from_name"]: r["value"]["text"][0] for r in pred}


# --- independent figures ------------------------------------------------------------------------

def expected_figures(kind: str, truth: dict, drafted: dict, scores: dict) -> dict:
    """What review.json must say, from the (draft, reviewed) labels this script made and the
    predictions' scores in the file."""
    ids = sorted(truth)
    same = {i: (set(drafted[i]) == set(truth[i]) if kind == "multilabel"
                else [(s["start"], s["end"], s["label"]) for s in drafted[i]]
                == [(s["start"], s["end"], s["label"]) for s in truth[i]] if kind == "ner"
                else drafted[i] == truth[i]) for i in ids}
    out = {"reviewed": len(ids), "accepted": sum(same.values())}
    scored = [i for i in ids if scores.get(i) is not None]
    if scored:
        out["brier"] = sum((scores[i] - same[i]) ** 2 for i in scored) / len(scored)
    if kind == "classify":
        out["accuracy"] = sum(same.values()) / len(ids)
        for i in ids:  # the confusion matrix, cell by cell: reviewed -> drafted
            key = f"confusion {truth[i]} <- {drafted[i]}"
            out[key] = out.get(key, 0) + 1
    if kind == "multilabel":
        out["exact_match"] = sum(same.values()) / len(ids)
    if kind == "ner":
        tp = sum(len({(s["start"], s["end"], s["label"]) for s in drafted[i]}
                     & {(s["start"], s["end"], s["label"]) for s in truth[i]}) for i in ids)
        predicted = sum(len(drafted[i]) for i in ids)
        gold = sum(len(truth[i]) for i in ids)
        out["exact_precision"], out["exact_recall"] = tp / predicted, tp / gold
    if kind == "instruct":
        out["rejected"] = sum(truth[i] is None for i in ids)
        out["edited"] = len(ids) - out["accepted"] - out["rejected"]
    return out


def reported_figures(kind: str, report: dict) -> dict:
    a = report["agreement"]
    out = {"reviewed": report["reviewed"], "accepted": report["reviews"]["verdicts"]["accepted"]}
    if report["calibration"]["brier"] is not None:
        out["brier"] = report["calibration"]["brier"]
    if kind == "classify":
        out["accuracy"] = a["accuracy"]
        out.update({f"confusion {t} <- {d}": n for t, row in a["confusion"].items() for d, n in row.items() if n})
    if kind == "multilabel":
        out["exact_match"] = a["exact_match"]
    if kind == "ner":
        out["exact_precision"] = a["exact"]["micro"]["precision"]
        out["exact_recall"] = a["exact"]["micro"]["recall"]
    if kind == "instruct":
        out["rejected"], out["edited"] = a["rejected"], a["edited"]
    return out


def roundtrip(client: Client, kind: str, work: Path, db: Path, keep: bool) -> list[str]:
    job = JOBS[kind]
    out = work / kind
    prelabel("run", f"jobs/examples/{job}.yaml", "--simulate", "-q", "--out", str(out), db=db)
    spec_name = next(line.split(":", 1)[1].strip() for line in (ROOT / f"jobs/examples/{job}.yaml")
                     .read_text().splitlines() if line.startswith("name:"))
    job_id = job_id_of(db, spec_name)
    config = (out / "labelstudio_config.xml").read_text()
    labels = [line.split('value="')[1].split('"')[0] for line in config.splitlines()
              if line.strip().startswith(("<Choice ", "<Label "))]
    project = client.call("POST", "/api/projects", {"title": f"prelabel review {kind} {time.strftime('%H:%M:%S')}",
                                                    "label_config": config, "show_collab_predictions": True})
    pid = project["id"]
    problems: list[str] = []
    try:
        import_tasks(client, pid, out)
        # The task list has no predictions: take them from the file, by ref_id.
        in_file = {t["data"]["ref_id"]: t for t in json.loads((out / "labelstudio.json").read_text())}
        tasks = [{**in_file[t["data"]["ref_id"]], "id": t["id"]}
                 for t in sorted(list_tasks(client, pid), key=lambda t: t["id"])]
        truth, drafted, n_corrected, not_fit_made = {}, {}, 0, 0
        for n, task in enumerate(tasks):
            ref = task["data"]["ref_id"]
            drafted[ref] = draft_label(kind, task)
            pred = (task["predictions"] or [{"result": []}])[0]["result"]
            if n % 4 == 1:
                result, label = correct(kind, labels, task, n_corrected)
                n_corrected += 1
            else:
                result, label = _ids(copy.deepcopy(pred)), drafted[ref]
                if kind == "classify" and not result:
                    continue
            body = {"result": result or [], "was_cancelled": result is None, "lead_time": 3.0 + n % 7}
            made = client.call("POST", f"/api/tasks/{task['id']}/annotations?project={pid}", body)
            if n == 0 and kind in ("classify", "multilabel"):
                # Revised after submitting: the export holds only the latest version.
                result2, label = correct(kind, labels, task, n_corrected)
                n_corrected += 1
                client.call("PATCH", f"/api/annotations/{made['id']}", {"result": result2})
            truth[ref] = label
            if n == 2 and kind == "classify":  # a second reviewer's answer outside the schema
                try:
                    client.call("POST", f"/api/tasks/{task['id']}/annotations?project={pid}",
                                {"result": [{"id": "bad", "from_name": "label", "to_name": "text",
                                             "type": "choices", "value": {"choices": ["not-a-label"]}}]})
                    not_fit_made = 1
                except CheckError as e:
                    print(f"  Label Studio itself refused an annotation outside the schema: {str(e)[:120]}")
        exported = client.call("GET", f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true")
        export_file = work / f"{kind}-export.json"
        export_file.write_text(json.dumps(exported, indent=1))
        n_annotations = sum(len(t.get("annotations") or []) for t in exported)
        print(f"{kind}: {len(tasks)} tasks, {n_annotations} annotations exported "
              f"({n_corrected} corrections, {not_fit_made} outside the schema)")

        first = json.loads(prelabel("review", "import", job_id, str(export_file), "--json", db=db).stdout)
        again = json.loads(prelabel("review", "import", job_id, str(export_file), "--json", db=db).stdout)
        f = first["files"][0]
        print(f"  import: {f['reviews']} reviews, {f['not_fit']} not fitting, {f['unknown_ids']} unknown; "
              f"re-import changed {again['reviews_changed']}")
        if again["reviews_changed"] != 0:
            problems.append(f"{kind}: re-importing the same export changed {again['reviews_changed']} reviews")
        if f["not_fit"] != not_fit_made:
            problems.append(f"{kind}: {f['not_fit']} annotations did not fit, {not_fit_made} were made so")
        printed = prelabel("review", "report", job_id, "--out", str(out), db=db).stdout
        print("  " + printed.strip().replace("\n", "\n  "))
        report = json.loads((out / "review.json").read_text())
        # Confidences from drafts.jsonl: a task whose draft is empty (no labels, no spans) has no
        # prediction, hence no score, in the Label Studio file.
        scores = {d["id"]: d["confidence"] for d in map(json.loads, (out / "drafts.jsonl").read_text().splitlines())}
        want, got = expected_figures(kind, truth, drafted, scores), reported_figures(kind, report)
        for key in sorted(set(want) | set(got)):
            value = want.get(key, 0)
            if abs((got.get(key) or 0) - value) > 1e-9:
                problems.append(f"{kind}: {key} is {got.get(key)} in review.json, {value} from the corrections made")
        if kind == "classify":  # a target loose enough for a threshold: its counts, recounted here
            printed = prelabel("review", "report", job_id, "--out", str(out), "--target-error", "0.3", db=db).stdout
            print("  " + printed.strip().splitlines()[1])
            t = json.loads((out / "review.json").read_text())["threshold"]
            if t.get("confidence") is None:
                problems.append(f"{kind}: no threshold for target error 0.3")
            else:
                above = [i for i in truth if scores.get(i) is not None and scores[i] >= t["confidence"]]
                wrong = sum(truth[i] != drafted[i] for i in above)
                if (t["reviewed_at_or_above"], t["errors_at_or_above"]) != (len(above), wrong):
                    problems.append(f"{kind}: threshold {t['confidence']}: review.json counts "
                                    f"{t['reviewed_at_or_above']} reviewed, {t['errors_at_or_above']} wrong; "
                                    f"recounted {len(above)}, {wrong}")
                print(f"  threshold {t['confidence']}: {len(above)} reviewed at or above, {wrong} corrected "
                      f"(recounted), bound {t['error_upper_bound']:.4f} <= 0.3")
        shown = {k: v for k, v in got.items() if not k.startswith("confusion")}
        cells = sum(k.startswith("confusion") for k in got)
        print(f"  figures: {json.dumps(shown)}{f' + {cells} confusion cells' if cells else ''} "
              f"({'match' if not problems else 'MISMATCH'})")
    finally:
        if not keep:
            client.call("DELETE", f"/api/projects/{pid}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", DEFAULT_URL))
    parser.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"))
    parser.add_argument("--work", type=Path, help="folder for the jobs' outputs and store (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the projects")
    parser.add_argument("--kinds", nargs="*", default=list(JOBS), choices=list(JOBS))
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no API token: pass --token or set LABEL_STUDIO_API_KEY")
    work = args.work or Path(tempfile.mkdtemp(prefix="prelabel-review-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "prelabel.db"
    try:
        client = Client(args.url, args.token)
        version = client.call("GET", "/api/version")
        print(f"Label Studio {version.get('release')} at {client.url}; work in {work}")
        problems = [p for kind in args.kinds for p in roundtrip(client, kind, work, db, args.keep)]
    except CheckError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 2
    if problems:
        print(f"FAILED: {len(problems)} mismatches")
        for p in problems:
            print(f"  {p}")
        return 1
    print("OK: every kind's corrections came back through Label Studio and the report's figures match them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
