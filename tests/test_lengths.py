"""Token-length checks before any forward pass: fail fast with file/line/field, or truncate on request."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from saas.data import DatasetError, load_dataset
from saas.lengths import check_lengths, context_length, longest_token_chars
from saas.prompts import encode

pytestmark = pytest.mark.model  # the embedded model's tokenizer (and, below, the model itself)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from saas.models import convert_default

    return AutoTokenizer.from_pretrained(str(convert_default()))


def _persona(path: Path, statements: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for s in statements:
            f.write(json.dumps({"question": f'Is the following statement something you would say?\n"{s}"',
                                "statement": s, "answer_matching_behavior": " Yes",
                                "answer_not_matching_behavior": " No"}) + "\n")
    return path


def test_a_5_mb_line_fails_at_once_with_file_line_field_and_count(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    path = _persona(tmp_path / "big.jsonl", ["I like art.", "word " * 1_000_000, "I like music."])
    ds = load_dataset(path)
    t0 = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        check_lengths(tokenizer, ds, max_tokens=8192)
    assert time.perf_counter() - t0 < 2.0  # no megabyte tokenization
    e = err.value
    assert (Path(e.path).name, e.line, e.field) == ("big.jsonl", 2, "question")
    assert "over the limit of 8,192 tokens" in str(e) and "--max-prompt-tokens" in str(e)
    assert str(e).startswith("big.jsonl, line 2, field 'question': prompt + answer is at least")


def test_a_pair_just_over_the_limit_reports_its_exact_token_count(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    ds = load_dataset(_persona(tmp_path / "p.jsonl", ["short one", "a fairly long statement " * 20]))
    n = len(encode(tokenizer, ds.instances[1].prompt, ds.instances[1].positive).ids)
    checked, report = check_lengths(tokenizer, ds, max_tokens=n)  # exactly at the limit: fine
    assert checked is ds and report.longest == n and report.truncated == 0
    with pytest.raises(DatasetError, match=f"prompt \\+ answer is {n:,} tokens, over the limit of {n - 1:,}"):
        check_lengths(tokenizer, ds, max_tokens=n - 1)


def test_truncation_only_when_asked_and_counted(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    ds = load_dataset(_persona(tmp_path / "t.jsonl", ["tiny", "word " * 3000, "I like music."]))
    checked, report = check_lengths(tokenizer, ds, max_tokens=8192, max_prompt_tokens=50)
    assert report.truncated == 1 and report.max_prompt_tokens == 50
    cut = checked.instances[1]
    assert len(tokenizer(cut.prompt, add_special_tokens=False)["input_ids"]) <= 51
    assert cut.prompt.endswith("Answer with Yes or No.")  # the end of the prompt is kept
    assert cut.meta["truncated_prompt_tokens"] == 50
    assert checked.instances[0] is ds.instances[0]  # short pairs untouched
    assert ds.instances[1].prompt.startswith("Is the following")  # the input dataset is not modified


def test_limits_of_the_embedded_model(embedded) -> None:  # type: ignore[no-untyped-def]
    assert context_length(embedded.model, embedded.tokenizer) == 8192
    assert 20 <= longest_token_chars(embedded.tokenizer) <= 200
    demo = load_dataset("demo")
    checked, report = check_lengths(embedded, demo)
    assert checked is demo and report.limit == 8192 and 20 < report.longest < 200
    with pytest.raises(ValueError, match="max_tokens must be a positive"):
        check_lengths(embedded, demo, max_tokens=0)
