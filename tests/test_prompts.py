"""The read position, on the three answer formats, with the embedded model's real tokenizer."""

from __future__ import annotations

import pytest

from saas.prompts import PLAIN_TEMPLATE, encode, is_label, prompt_text


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    """The embedded model's tokenizer alone (no weights are loaded)."""
    from transformers import AutoTokenizer

    from saas.models import convert_default

    return AutoTokenizer.from_pretrained(str(convert_default()))


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


def test_system_prompt_replaces_the_default_one(tok) -> None:
    default = prompt_text(tok, "Hi?")
    assert prompt_text(tok, "Hi?", system=None) == default  # the template's own default system message
    mine = prompt_text(tok, "Hi?", system="Be cheerful.")
    assert mine.startswith("<|im_start|>system\nBe cheerful.<|im_end|>")
    assert mine.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    default_system = default.split("<|im_end|>")[0]
    assert default_system not in mine


def test_plain_template_with_a_system_prompt() -> None:
    from saas.prompts import PLAIN_SYSTEM

    class NoTemplate:
        chat_template = None

    assert prompt_text(NoTemplate(), "Q?", system="S.") == PLAIN_SYSTEM.format(system="S.") + PLAIN_TEMPLATE.format(prompt="Q?")


def test_template_without_a_system_role_gets_it_in_the_user_turn() -> None:
    class NoSystemRole:
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):  # type: ignore[no-untyped-def]
            if any(m["role"] == "system" for m in messages):
                raise ValueError("System role not supported")
            return "|".join(m["content"] for m in messages)

    assert prompt_text(NoSystemRole(), "Q?", system="S.") == "S.\n\nQ?"


def test_prompted_system_prompt_is_a_function_of_the_card() -> None:
    from saas.data import BehaviourDataset
    from saas.prompts import prompted_system_prompt

    card = BehaviourDataset("optimism", "Optimism about the future.", [], "sentence",
                            negative_description="Expecting the worst.")
    assert prompted_system_prompt(card) == ("Respond in a way that shows optimism: Optimism about the future. "
                                            "Do not: Expecting the worst.")
    card.negative_description = ""
    assert prompted_system_prompt(card) == "Respond in a way that shows optimism: Optimism about the future."
    bare = BehaviourDataset("self_reliance", "relying  on oneself", [], "sentence", negative_description="asking for help")
    assert prompted_system_prompt(bare) == "Respond in a way that shows self reliance: relying on oneself. Do not: asking for help"
