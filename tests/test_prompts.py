"""The read position, on the three answer formats, with the embedded model's real tokenizer."""

from __future__ import annotations

import pytest

from saas.prompts import PLAIN_TEMPLATE, encode, is_label, prompt_text


@pytest.fixture(scope="module")
def tok(embedded):
    return embedded.tokenizer


def test_ab_label_reads_the_letter(tok) -> None:
    enc = encode(tok, "Which?\n\nChoices:\n (A) one\n (B) two", "(B)")
    answer = [tok.decode([i]) for i in enc.ids[enc.answer_start:]]
    assert answer == ["(", "B", ")"]
    assert tok.decode([enc.ids[enc.read_index]]) == "B"


def test_yes_no_reads_the_word(tok) -> None:
    enc = encode(tok, "Is this a statement you would say? Answer with Yes or No.", "Yes")
    assert enc.read_index == len(enc.ids) - 1
    assert tok.decode([enc.ids[enc.read_index]]) == "Yes"
    assert enc.answer_start == enc.read_index


def test_sentence_reads_the_last_token(tok) -> None:
    enc = encode(tok, "Will it rain tomorrow?", "It will be a lovely sunny day.")
    assert enc.read_index == len(enc.ids) - 1
    assert tok.decode([enc.ids[enc.read_index]]) == "."
    assert tok.decode(enc.ids[enc.answer_start:]) == "It will be a lovely sunny day."


def test_chat_template_puts_answer_at_start_of_assistant_turn(tok) -> None:
    enc = encode(tok, "Hi?", "Yes")
    text = tok.decode(enc.ids)
    assert text.endswith("<|im_start|>assistant\nYes")
    assert text.count("<|im_end|>") == 2  # system and user turns closed; the answer's turn left open
    assert prompt_text(tok, "Hi?").endswith("assistant\n")


def test_label_detection() -> None:
    assert is_label("(A)") and is_label("B") and is_label(" (C)")
    assert not is_label("Yes") and not is_label("It is (A) fine.")


def test_plain_template_for_models_without_chat_template(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "User", ":", "Q", "?", "Assistant", "(", "A", ")", "Yes"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    assert prompt_text(tok, "Q?") == PLAIN_TEMPLATE.format(prompt="Q?")
    enc = encode(tok, "Q?", "(A)")
    assert tok.convert_ids_to_tokens(enc.ids[enc.read_index]) == "A"
