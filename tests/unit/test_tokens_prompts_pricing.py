import socket

import pytest

from prelabel.errors import JobFileError
from prelabel.budget.pricing import cost_usd, price_for
from prelabel.tasks.prompts import load_template
from prelabel.budget import tokens
from prelabel.budget.tokens import FALLBACK_ENCODING, TokenCounter, encoding_name_for


def test_encodings_load_with_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    tokens._load.cache_clear()  # load the rank files from the package now, not from an earlier test
    for model in ("gpt-4o-mini", "gpt-4", "llama-3-70b"):
        assert TokenCounter(model).count("hello world") == 2


@pytest.mark.parametrize("name", sorted(tokens._ENCODINGS))
def test_the_rank_files_read_as_tiktoken_reads_them(name):
    from tiktoken.load import load_tiktoken_bpe

    path, expected = tokens._DIR / f"{name}.tiktoken", tokens._ENCODINGS[name]["expected_hash"]
    assert tokens._ranks(path, expected) == load_tiktoken_bpe(str(path), expected_hash=expected)


def test_a_damaged_rank_file_is_refused(tmp_path):
    damaged = tmp_path / "o200k_base.tiktoken"
    damaged.write_bytes((tokens._DIR / "o200k_base.tiktoken").read_bytes()[:-10])
    with pytest.raises(ValueError, match="sha256"):
        tokens._ranks(damaged, tokens._ENCODINGS["o200k_base"]["expected_hash"])


def test_unknown_models_fall_back_to_o200k():
    assert encoding_name_for("some-local-model") == FALLBACK_ENCODING == "o200k_base"
    assert encoding_name_for("gpt-3.5-turbo") == "cl100k_base"


def test_truncate_keeps_a_prefix_within_the_limit():
    counter = TokenCounter("gpt-4o-mini")
    text = "naïve café 🙂 " * 50
    cut = counter.truncate(text, 10)
    assert text.startswith(cut) and counter.count(cut) <= 10
    assert counter.truncate("short", 10) == "short"


def test_template_version_is_the_file_hash_and_bind_renders_the_system_once():
    template = load_template("classify")
    assert template.version.startswith("classify@") and len(template.version) == len("classify@") + 10
    messages = template.bind(labels="- a: x", guidelines="")
    first, second = messages("one"), messages("two")
    assert first[0] is second[0] and first[1]["content"].endswith('"""\none\n"""')
    assert messages("$text {x}") == template.render(labels="- a: x", guidelines="", text="$text {x}")


def test_missing_template_is_a_job_file_error():
    with pytest.raises(JobFileError, match="not found"):
        load_template("no-such-kind")


def test_prices_snapshots_and_overrides():
    assert price_for("gpt-4o-mini-2024-07-18") == price_for("gpt-4o-mini")
    assert price_for("my-local-model") is None
    assert cost_usd(price_for("gpt-4o-mini"), 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert cost_usd(None, 10, 10) == 0.0
