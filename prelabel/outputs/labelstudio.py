"""Label Studio export: the labeling config, one task per draft, and a check of every prediction.

Label Studio imports a malformed prediction without a word and then simply does not show it,
so each prediction is checked against the config XML actually written (parsed back, not our
intentions) and dropped, with a count, when it would not display. The task itself is always
written: failed, invalid and refused items are exactly the ones people must label by hand.
"""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..errors import OutputConfigError
from ..tasks.registry import KINDS
from ..tasks.studio import TEXT
from .atomic import atomic_writer

TASKS_FILE = "labelstudio.json"
CONFIG_FILE = "labelstudio_config.xml"
MAX_REJECTIONS_KEPT = 20

# Control tag -> the ``type`` of its results and the key under result["value"] holding the values.
_CONTROL_TAGS = {"Choices": "choices", "Labels": "labels", "TextArea": "textarea"}
_VALUE_KEY = {"choices": "choices", "labels": "labels", "textarea": "text"}
_OPTION_TAGS = {"Choices": "Choice", "Labels": "Label"}

# --- the config -------------------------------------------------------------------------------

def kind_results(kind: str, record: dict) -> list[dict]:
    """The results a record's label makes for its kind (review import reads corrections this way)."""
    return _kind(kind).studio_results(record)


def labeling_config(task) -> str:
    """The Label Studio labeling config (XML) matching the tasks ``to_task`` makes for ``task``
    (the job's task section: its kind's controls, from the task registry)."""
    return "\n".join(["<View>", *_kind(task.kind).studio_controls(task), "</View>", ""])


def _kind(name: str):
    try:
        return KINDS[name]
    except KeyError:
        raise OutputConfigError(f"no Label Studio export for task kind {name!r}; "
                                f"known: {', '.join(sorted(KINDS))}") from None


# --- what a config admits ---------------------------------------------------------------------

@dataclass(frozen=True)
class Control:
    type: str                       # "choices" / "labels" / "textarea": the results' ``type``
    to_name: str                    # the object tag it annotates
    values: frozenset[str] | None   # allowed values; None for free text (TextArea)
    multiple: bool                  # more than one value per result allowed


@dataclass(frozen=True)
class ConfigSchema:
    controls: Mapping[str, Control]  # control tag name -> what it admits
    objects: frozenset[str]          # object tag names (e.g. the Text's ``name``)


def parse_config(xml: str) -> ConfigSchema:
    """What a simple Label Studio config (Choices / Labels / TextArea over Text) admits."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"labeling config is not well-formed XML: {e}") from e
    controls: dict[str, Control] = {}
    objects: set[str] = set()
    for el in root.iter():
        name = el.get("name")
        if el.tag in _CONTROL_TAGS:
            if not name or not el.get("toName"):
                raise ValueError(f"labeling config: <{el.tag}> needs both name and toName")
            if name in controls:
                raise ValueError(f"labeling config: two control tags are named {name!r}")
            controls[name] = _control(el)
        elif name and el.get("value", "").startswith("$") and el.get("toName") is None:
            objects.add(name)  # an object tag: shows task data, e.g. <Text value="$text"/>
    for name, control in controls.items():
        if control.to_name not in objects:
            raise ValueError(f"labeling config: control {name!r} has toName {control.to_name!r}, "
                             f"but no object tag has that name")
    return ConfigSchema(controls=controls, objects=frozenset(objects))


def _control(el: ET.Element) -> Control:
    kind = _CONTROL_TAGS[el.tag]
    if el.tag == "TextArea":
        return Control(type=kind, to_name=el.get("toName"), values=None,
                       multiple=el.get("maxSubmissions") != "1")
    # A result stores an option's alias when it has one, else its value.
    options = [opt.get("alias") or opt.get("value") for opt in el.iter(_OPTION_TAGS[el.tag])]
    return Control(type=kind, to_name=el.get("toName"),
                   values=frozenset(o for o in options if o is not None),
                   multiple=el.get("choice", "single") == "multiple")


# --- tasks and predictions --------------------------------------------------------------------

def to_task(record: dict, model_version: str) -> dict:
    """One Label Studio task for one draft; with no prediction when the draft has no label."""
    # Review fields sit in ``data``: the Data Manager filters and sorts on data columns, not on meta.
    task = {
        "data": {TEXT: record["text"], "ref_id": record["id"],
                 "flags": ", ".join(record.get("flags") or []),
                 "needs_review": bool(record.get("needs_review")),
                 "review_priority": record.get("review_priority")},
        "predictions": [],
    }
    data = task["data"]
    if record.get("endpoint") is not None:  # who answered (a base URL, or "simulator"): a stand-in's label, not a model's
        data["endpoint"], data["simulated"] = record["endpoint"], bool(record.get("simulated"))
    if record.get("source_id") not in (None, record["id"]):  # an instruction pair, a variant
        data["source_id"] = record["source_id"]
    if record.get("augmentation"):  # what the variant was made by, and the label it came with
        data["augmentation"] = record["augmentation"]["kind"]
        carried = record.get("carried_label")
        data["carried_label"] = carried if isinstance(carried, str) else json.dumps(carried, ensure_ascii=False)
    results = _kind(record["task"]).studio_results(record)
    if results:
        prediction: dict = {"model_version": model_version}
        if record.get("confidence") is not None:
            prediction["score"] = record["confidence"]
        prediction["result"] = results
        task["predictions"].append(prediction)
    return task


def validate_prediction(prediction: dict, schema: ConfigSchema, text: str | None = None) -> list[str]:
    """Why Label Studio would not show this prediction; empty when it would.

    With the task's ``text``, a span must also cover exactly the text it claims (Label Studio would
    highlight the offsets and keep the stale text, silently)."""
    errors = []
    version = prediction.get("model_version")
    if not isinstance(version, str) or not version.strip():
        errors.append(f"model_version must be a non-empty string, got {version!r}")
    score = prediction.get("score")
    if score is not None and not _unit_number(score):  # null is how Label Studio stores "no score"
        errors.append(f"score must be a number in [0, 1], got {score!r}")
    results = prediction.get("result")
    if not isinstance(results, list) or not results:
        errors.append("result must be a non-empty list")
        return errors
    seen_ids: set = set()
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            errors.append(f"result[{i}] must be an object")
            continue
        rid = result.get("id")
        if not isinstance(rid, str) or not rid:
            errors.append(f"result[{i}].id must be a non-empty string")
        elif rid in seen_ids:
            errors.append(f"result[{i}].id {rid!r} is used twice")
        seen_ids.add(rid)
        errors.extend(f"result[{i}]: {e}" for e in _result_errors(result, schema, text))
    return errors


def _result_errors(result: dict, schema: ConfigSchema, text: str | None = None) -> list[str]:
    from_name, to_name, kind = result.get("from_name"), result.get("to_name"), result.get("type")
    control = schema.controls.get(from_name)
    if control is None:
        return [f"from_name {from_name!r} is not a control in the config "
                f"(controls: {', '.join(sorted(schema.controls)) or 'none'})"]
    errors = []
    if to_name != control.to_name or to_name not in schema.objects:
        errors.append(f"to_name {to_name!r} does not match control {from_name!r}, "
                      f"which annotates {control.to_name!r}")
    if kind != control.type:
        errors.append(f"type {kind!r} does not match control {from_name!r} of type {control.type!r}")
        return errors
    value = result.get("value")
    key = _VALUE_KEY[control.type]
    values = value.get(key) if isinstance(value, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        errors.append(f"value.{key} must be a list of strings")
        return errors
    if control.values is not None:
        errors.extend(f"value {v!r} is not an option of control {from_name!r}"
                      for v in values if v not in control.values)
    if not values:
        errors.append(f"value.{key} is empty")
    elif not control.multiple and len(values) > 1:
        errors.append(f"control {from_name!r} admits one value, got {len(values)}")
    if control.type == "labels":
        errors.extend(_span_errors(value, text))
    return errors


def result_errors(result: dict, schema: ConfigSchema, text: str | None = None) -> list[str]:
    """Why one result (a prediction's or a reviewer's) does not fit the config; empty when it does."""
    return _result_errors(result, schema, text)


def _span_errors(value: dict, text: str | None) -> list[str]:
    start, end = value.get("start"), value.get("end")
    if (isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int)
            or not isinstance(end, int) or not 0 <= start < end):
        return [f"a span needs integer start < end, got start={start!r} end={end!r}"]
    errors = []
    score = value.get("score")
    if score is not None and not _unit_number(score):
        errors.append(f"a span's score must be a number in [0, 1], got {score!r}")
    if text is not None:
        if end > len(text):
            errors.append(f"span end {end} is past the end of the text ({len(text)} characters)")
        elif value.get("text") is not None and value["text"] != text[start:end]:
            errors.append(f"span text {value['text']!r} is not the text at {start}:{end} "
                          f"({text[start:end]!r})")
    return errors


def _unit_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and 0 <= value <= 1)


# --- the files --------------------------------------------------------------------------------

def write_labelstudio(records: Iterable[dict], out_dir: Path, task, model_version: str, *,
                      tasks_file: str = TASKS_FILE, extra_data: Callable[[dict], dict] | None = None) -> dict:
    """Stream one task per record, in order, to ``labelstudio.json`` beside its config XML.

    Both files are replaced together at the end or not at all. Returns the counts. ``extra_data``
    adds data columns to a record's task (a review sample marks why each draft was drawn).
    """
    if not model_version or not model_version.strip():
        raise ValueError("model_version is empty: Label Studio selects predictions to show by it")
    out_dir = Path(out_dir)
    xml = labeling_config(task)
    schema = parse_config(xml)
    counts = {"tasks": 0, "predictions": 0, "rejected_predictions": 0}
    rejections: list[str] = []
    # Nested: the JSON is renamed into place first, then the config; an error while streaming
    # leaves both old files untouched.
    with atomic_writer(out_dir / CONFIG_FILE) as config_out, \
            atomic_writer(out_dir / tasks_file) as out:
        config_out.write(xml)
        out.write("[\n")
        for record in records:
            ls_task = to_task(record, model_version)
            if extra_data is not None:
                ls_task["data"].update(extra_data(record))
            kept = []
            for prediction in ls_task["predictions"]:
                errors = validate_prediction(prediction, schema, record["text"])
                if errors:
                    counts["rejected_predictions"] += 1
                    room = MAX_REJECTIONS_KEPT - len(rejections)
                    rejections.extend(f"item {record['id']!r}: {e}" for e in errors[:room])
                else:
                    kept.append(prediction)
            ls_task["predictions"] = kept
            counts["predictions"] += len(kept)
            if counts["tasks"]:
                out.write(",\n")
            # allow_nan=False: NaN would make the whole file invalid JSON for Label Studio.
            out.write(json.dumps(ls_task, ensure_ascii=False, allow_nan=False))
            counts["tasks"] += 1
        out.write("\n]\n")
    return {**counts, "rejections": rejections}
