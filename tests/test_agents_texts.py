"""The texts the offline agents read, without any model: description clauses, pair contrasts, mined
phrases, polarity of sub-behaviour names, and the layering of the agents package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from saas.agents.clauses import base_form, description_clauses, negate, third_person
from saas.agents.contrast import contrast_of, statement_of
from saas.agents.offline import content_words, cue_words, polarity
from saas.agents.phrases import mine_phrases
from saas.agents.types import SubBehaviour
from saas.data import KNOWN_DESCRIPTIONS, Instance

OPTIMISM = (
    "Optimism about uncertain future events. Asked how an upcoming or uncertain situation will turn out (a job "
    "interview, an exam, a medical result, a trip, the weather), the optimistic reply expects a good outcome "
    "outright, points to concrete reasons for hope such as how these things usually go or a sign that bodes well, "
    "credits the person's own preparation and strengths, treats possible setbacks as small, temporary and "
    "manageable, and sees an opportunity or silver lining even if things do not go to plan."
)


def test_clauses_of_a_rich_description_are_its_behaviours_not_its_topics() -> None:
    clauses = description_clauses(OPTIMISM)
    assert [c.name for c in clauses] == [
        "expects a good outcome outright",
        "points to concrete reasons for hope",
        "credits the person's own preparation and strengths",
        "treats possible setbacks as small, temporary and manageable",
        "sees an opportunity or silver lining",
    ]
    assert all(c.pole == 1 for c in clauses)
    assert "how these things usually go" in clauses[1].text  # the description keeps the whole clause
    topics = {"interview", "exam", "medical", "trip", "weather", "optimism"}
    assert not any(topics & set(c.text.lower().split()) for c in clauses)  # parentheses and headline dropped


def test_clauses_with_they_rather_than_and_semicolons() -> None:
    openness = description_clauses(KNOWN_DESCRIPTIONS["openness"])
    names = [c.name for c in openness]
    assert "enjoys new ideas, art, abstract thinking and unfamiliar experiences" in names  # list items stay
    assert "values creativity and unconventional views" in names  # plural verb after "They", in 3rd person
    opposite = [c for c in openness if c.pole == -1]
    assert [c.name for c in opposite] == ["not preferring the familiar, the routine and the concrete"]
    polite = description_clauses(
        "Politeness. Faced with a request, question, complaint or favour, the polite reply is considerate: it "
        "thanks the person for what they have done; it apologises for a mistake and takes responsibility instead "
        "of making excuses; and it offers further help warmly."
    )
    assert [(c.name, c.pole) for c in polite] == [
        ("is considerate", 1),
        ("thanks the person for what they have done", 1),
        ("apologises for a mistake and takes responsibility", 1),
        ("not making excuses", -1),
        ("offers further help warmly", 1),
    ]  # "question" and "favour" are nouns here, not clauses


def test_sentences_about_the_negative_answer_are_the_opposite_pole() -> None:
    clauses = description_clauses(
        "The optimistic reply expects success. The negative reply dwells on risks and doubts the person's chances."
    )
    assert [(c.name, c.pole) for c in clauses] == [
        ("expects success", 1),
        ("does not dwell on risks and doubts the person's chances", -1),
    ]


def test_sparse_or_verbless_descriptions() -> None:
    assert [c.name for c in description_clauses("Expecting good outcomes of uncertain events.")] == [
        "expecting good outcomes of uncertain events"
    ]
    assert description_clauses("The behaviour shown by the positive answers of my_file.") == []
    assert description_clauses("") == []


def test_verb_forms() -> None:
    assert third_person("enjoy new ideas") == "enjoys new ideas" and third_person("are willing") == "is willing"
    assert third_person("carry on") == "carry on"  # not a listed verb: left alone
    assert [base_form(v) for v in ("credits", "apologises", "carries", "is", "watches")] == [
        "credit", "apologise", "carry", "be", "watch"]
    assert negate("dwells on risks") == "does not dwell on risks"
    assert negate("preferring routine") == "not preferring routine"


def test_contrast_of_each_answer_kind() -> None:
    sentence = contrast_of(Instance("s", "Will it rain?", "It will clear up soon.", "It will pour all day."))
    assert (sentence.kind, sentence.positive, sentence.negative) == ("answers", "It will clear up soon.",
                                                                      "It will pour all day.")
    persona = 'Is the following statement something you would say?\n"I hate new ideas"\n\nAnswer with Yes or No.'
    no = contrast_of(Instance("p", persona, " No", " Yes"))
    assert (no.kind, no.positive, no.stance) == ("stance", "I hate new ideas", -1)
    assert no.behaviour_text == 'would not say: "I hate new ideas"' and no.opposite_text.startswith("says:")
    assert contrast_of(Instance("q", persona, "Yes", "No")).stance == 1
    ab = contrast_of(Instance("a", "Pick one.\n (A) Share the credit\n (B) Take all the credit", "(A)", "(B)"))
    assert (ab.positive, ab.negative) == ("Share the credit", "Take all the credit")
    assert statement_of("Do you like tea?") == "Do you like tea?"


def test_mined_phrases_are_the_contrast_not_the_topic() -> None:
    topics = ["garden", "exam", "interview", "match", "flight", "move", "dentist", "party", "trip", "concert"]
    pos = [f"The {t} will go well; no need to worry, you are well prepared." for t in topics]
    neg = [f"The {t} will go badly; it is a real risk and you will probably struggle." for t in topics]
    phrases = mine_phrases(pos, neg)
    texts = {p.text: p.pole for p in phrases}
    assert not set(texts) & set(topics)  # the topic is in both answers of every pair
    assert texts.get("prepared") == 1 and texts.get("badly") == -1
    assert "no need" in texts and "need" not in texts  # the longer phrase with (nearly) the same support wins
    assert all(p.other == 0 and p.support == 10 for p in phrases if p.text in ("prepared", "badly"))
    assert mine_phrases([], neg) == [] and mine_phrases(["a"], ["b"]) == []


def test_polarity_and_cue_words_of_names() -> None:
    assert polarity("does not dwell on risks") == (-1, "dwell on risks")
    assert polarity('avoids "no need"') == (-1, '"no need"')
    assert polarity('disagrees with statements like "hate"') == (-1, 'statements like "hate"')
    assert polarity("credits the person's preparation") == (1, "credits the person's preparation")
    sub = SubBehaviour("S1", 'says "well prepared", "good news"', 'The positive answers say "well prepared".')
    assert cue_words(sub) == content_words("well prepared good news")
    assert "answer" not in content_words("The positive answer shows it") and "prepar" in content_words("preparing")


def _imports(path: Path) -> set[str]:
    """Modules of saas.agents imported at module level (not under TYPE_CHECKING, not inside functions)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "saas.agents":
                out |= {f"saas.agents.{a.name}" for a in node.names}
            elif node.module.startswith("saas.agents."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("saas.agents.")}
    return out


def test_agents_package_has_no_import_cycle() -> None:
    pkg = Path(__file__).resolve().parents[1] / "saas" / "agents"
    graph = {f"saas.agents.{p.stem}": _imports(p) for p in pkg.glob("*.py") if p.stem != "__init__"}
    assert graph["saas.agents.types"] == set()  # the bottom layer imports nothing of the package
    assert "saas.agents.backend" not in graph  # the old module that imported its own importers is gone
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            pytest.fail(f"import cycle: {' -> '.join([*path, m])}")
        if state.get(m) == 2 or m not in graph:
            return
        state[m] = 1
        for dep in graph[m]:
            visit(dep, [*path, m])
        state[m] = 2

    for module in graph:
        visit(module, [])
    for backend in ("offline", "anthropic_backend", "local_llm"):
        assert "saas.agents.factory" not in graph[f"saas.agents.{backend}"]
        assert "saas.agents.pipeline" not in graph[f"saas.agents.{backend}"]
