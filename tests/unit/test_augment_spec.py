"""The job file's ``augment`` section: defaults, and bad input failing before any call, by field."""
from pathlib import Path

import pytest
from pydantic import ValidationError

from prelabel.config import LANGUAGES, AugmentSpec, BackTranslationStep, NoiseStep, SynonymStep
from prelabel.errors import JobFileError
from prelabel.job.jobfile import load_job
from tests.conftest import write_job

ISSUE_EXAMPLE = """augment:
  recheck: true
  seed: 7
  steps:
    - {kind: synonym, n: 2, aug_p: 0.15}
    - {kind: noise, n: 1, ops: [keyboard, swap]}
    - {kind: paraphrase, n: 2}
    - {kind: back_translation, via: [de, fr]}
"""


def _error(data: dict) -> dict:
    with pytest.raises(ValidationError) as e:
        AugmentSpec.model_validate(data)
    return e.value.errors()[0]


def test_the_issue_example_loads(job_dir: Path):
    spec = load_job(write_job(job_dir, extra=ISSUE_EXAMPLE))
    aug = spec.augment
    assert aug.recheck and aug.seed == 7 and [s.kind for s in aug.steps] == [
        "synonym", "noise", "paraphrase", "back_translation"]
    assert aug.steps[0] == SynonymStep(kind="synonym", n=2, aug_p=0.15)
    assert aug.steps[1].ops == ["keyboard", "swap"] and aug.steps[3].via == ["de", "fr"]


def test_defaults(job_dir: Path):
    assert load_job(write_job(job_dir)).augment is None
    aug = AugmentSpec.model_validate({"steps": [{"kind": "noise"}]})
    assert (aug.seed, aug.recheck, aug.include_flagged, aug.source_lang) == (0, False, False, "en")
    assert aug.near_duplicate_threshold == 0.9
    assert aug.steps[0] == NoiseStep(kind="noise", n=1, ops=["keyboard"], aug_p=0.1)


def test_unknown_kind_names_the_step(job_dir: Path):
    job = write_job(job_dir, extra="augment:\n  steps:\n    - {kind: synonym}\n    - {kind: sinonym, n: 2}\n")
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert e.value.field == "augment.steps.1.kind" and e.value.line == 10
    assert "sinonym" in str(e.value) and "back_translation" in str(e.value)


def test_unknown_parameter_names_the_field(job_dir: Path):
    job = write_job(job_dir, extra="augment:\n  steps:\n    - {kind: synonym, n: 2, aug_q: 0.2}\n")
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert e.value.field == "augment.steps.0.aug_q"  # as written in the file: no union tag in the path
    assert e.value.line == 9 and "unknown key" in str(e.value)


def test_instruct_jobs_have_no_label_to_carry_onto_variants(job_dir: Path):
    job = write_job(job_dir, extra="augment:\n  steps:\n    - {kind: noise}\n")
    job.write_text(job.read_text().replace("task: {kind: classify, labels: {", "task: {kind: instruct, n: 2}\n#"))
    with pytest.raises(JobFileError, match="instruct drafts have none"):
        load_job(job)


@pytest.mark.parametrize("step, where", [
    ({"kind": "synonym", "n": 0}, "n"),
    ({"kind": "synonym", "aug_p": 1.5}, "aug_p"),
    ({"kind": "noise", "ops": ["keyboard", "typo"]}, "ops"),
    ({"kind": "noise", "ops": []}, "ops"),
    ({"kind": "noise", "ops": ["swap", "swap"]}, "ops"),
    ({"kind": "paraphrase", "n": 2, "temperature": 1}, "temperature"),
    ({"kind": "back_translation"}, "via"),
])
def test_bad_parameters_name_their_field(step: dict, where: str):
    assert where in _error({"steps": [step]})["loc"]


@pytest.mark.parametrize("via", [["de", "xx"], ["German"], ["DE"], ["de-DE"], ["de", "de"], []])
def test_pivots_are_iso_639_1_codes(via: list):
    error = _error({"steps": [{"kind": "back_translation", "via": via}]})
    assert error["loc"][-1] == "via" or error["loc"][-2] == "via"


def test_pivot_language_message_names_the_code():
    error = _error({"steps": [{"kind": "back_translation", "via": ["de", "xx"]}]})
    assert "'xx' is not an ISO 639-1 language code" in error["msg"]


def test_a_pivot_cannot_be_the_source_language():
    error = _error({"source_lang": "de", "steps": [{"kind": "back_translation", "via": ["fr", "de"]}]})
    assert error["loc"] == ("steps",) and "step 0" in error["msg"] and "source_lang" in error["msg"]
    assert _error({"source_lang": "english", "steps": [{"kind": "noise"}]})["loc"] == ("source_lang",)


def test_steps_are_required_and_the_threshold_bounded():
    assert _error({"steps": []})["loc"] == ("steps",)
    assert _error({"steps": [{"kind": "noise"}], "near_duplicate_threshold": 0})["loc"] == (
        "near_duplicate_threshold",)


def test_language_table():
    assert len(LANGUAGES) == 184 and all(len(code) == 2 and code.islower() for code in LANGUAGES)
    assert LANGUAGES["de"] == "German" and LANGUAGES["fr"] == "French" and LANGUAGES["zh"] == "Chinese"
    assert BackTranslationStep(kind="back_translation", via=["ja"]).via == ["ja"]
