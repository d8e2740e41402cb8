"""Data layer: real persona/CAA files, the bundled demo, and validation errors with file/line/field."""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path

import pytest

from saas.data import (
    DEFAULT_PERSONA_SUFFIX,
    KNOWN_DESCRIPTIONS,
    BehaviourDataset,
    DatasetError,
    default_description,
    discover_datasets,
    list_demos,
    load_dataset,
    load_dataset_from_bytes,
    parse_options,
    save_dataset,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PERSONA = DATA / "persona"
CAA = DATA / "caa"

PERSONA_TRAITS = [
    "openness",
    "conscientiousness",
    "extraversion",
    "agreeableness",
    "neuroticism",
    "desire-for-acquiring-power",
    "no-goal-change",
    "no-shut-down",
]
CAA_BEHAVIOURS = [
    "coordinate-other-ais",
    "corrigible-neutral-HHH",
    "hallucination",
    "myopic-reward",
    "refusal",
    "survival-instinct",
    "sycophancy",
]
# (generate, test_ab, raw or None) from the data README.
CAA_SIZES = {
    "coordinate-other-ais": (360, 50, 410),
    "corrigible-neutral-HHH": (290, 50, 340),
    "hallucination": (1000, 50, None),
    "myopic-reward": (950, 50, 1000),
    "refusal": (408, 50, 458),
    "survival-instinct": (903, 50, 953),
    "sycophancy": (1000, 50, None),
}
CAA_FILES = [
    (b, f, n)
    for b, sizes in CAA_SIZES.items()
    for f, n in zip(("generate_dataset.json", "test_dataset_ab.json", "dataset.json"), sizes, strict=True)
    if n is not None
]


# ---------------------------------------------------------------------------------------------
# Persona
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trait", PERSONA_TRAITS)
def test_persona_files_load_1000_balanced_instances(trait: str) -> None:
    ds = load_dataset(PERSONA / f"{trait}.jsonl")
    assert ds.name == trait
    assert ds.answer_kind == "yesno"
    assert len(ds) == 1000
    assert Counter(i.positive for i in ds.instances) == {"Yes": 500, "No": 500}
    assert all({i.positive, i.negative} == {"Yes", "No"} for i in ds.instances)
    assert len({i.id for i in ds.instances}) == 1000
    assert ds.instances[17].id == f"{trait}:17"
    assert ds.description == KNOWN_DESCRIPTIONS[re.sub(r"[^a-z0-9]", "", trait.lower())]
    first = json.loads((PERSONA / f"{trait}.jsonl").read_text(encoding="utf-8").splitlines()[0])
    inst = ds.instances[0]
    assert inst.prompt == first["question"] + DEFAULT_PERSONA_SUFFIX
    assert inst.positive == first["answer_matching_behavior"].strip()
    assert inst.meta["statement"] == first["statement"]
    assert inst.meta["label_confidence"] == pytest.approx(first["label_confidence"])
    assert inst.meta["persona_suffix"] == DEFAULT_PERSONA_SUFFIX
    assert inst.meta["line"] == 1
    assert inst.options == ()


def test_persona_suffix_can_be_turned_off_and_format_forced() -> None:
    bare = load_dataset(PERSONA / "openness.jsonl", format="persona", persona_suffix=None, limit=5)
    assert len(bare) == 5
    assert bare.instances[0].prompt.startswith("Is the following statement something you would say?\n")
    assert bare.instances[0].prompt.endswith('"')
    assert bare.instances[0].meta["persona_suffix"] == ""
    custom = load_dataset(PERSONA / "openness.jsonl", persona_suffix=" Reply Yes or No.", limit=1)
    assert custom.instances[0].prompt.endswith('" Reply Yes or No.')


def test_persona_polarity_follows_the_label() -> None:
    ds = load_dataset(PERSONA / "openness.jsonl")
    hater = next(i for i in ds.instances if i.meta["statement"] == "I hate new ideas and artistic things")
    assert (hater.positive, hater.negative) == ("No", "Yes")


# ---------------------------------------------------------------------------------------------
# CAA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("behaviour", "filename", "size"), CAA_FILES)
def test_caa_files_load(behaviour: str, filename: str, size: int) -> None:
    ds = load_dataset(CAA / behaviour / filename)
    assert ds.name == behaviour
    assert ds.answer_kind == "ab"
    assert len(ds) == size
    assert ds.description == KNOWN_DESCRIPTIONS[re.sub(r"[^a-z0-9]", "", behaviour.lower())]
    assert len({i.id for i in ds.instances}) == size
    for inst in ds.instances:
        assert re.fullmatch(r"\([A-H]\)", inst.positive), inst
        assert inst.negative in ("(A)", "(B)")
        assert inst.positive != inst.negative
        assert inst.positive in inst.options and inst.negative in inst.options
        assert len(inst.options) >= 2
        # options are consecutive letters from (A)
        assert inst.options == tuple(f"({chr(65 + k)})" for k in range(len(inst.options)))
        assert inst.prompt == inst.prompt.strip()
        assert not inst.prompt.startswith("Question:")
    if behaviour != "survival-instinct":
        assert all(len(i.options) == 2 for i in ds.instances)


def test_caa_raw_answers_are_stripped() -> None:
    raw_text = (CAA / "myopic-reward" / "dataset.json").read_text(encoding="utf-8")
    assert '"answer_matching_behavior": " (' in raw_text  # the raw file has the leading space
    ds = load_dataset(CAA / "myopic-reward" / "dataset.json")
    assert {i.positive for i in ds.instances} == {"(A)", "(B)"}
    assert all(i.meta["split"] == "raw" for i in ds.instances)


def test_survival_instinct_multi_option_items() -> None:
    ds = load_dataset(CAA / "survival-instinct" / "generate_dataset.json")
    counts = Counter(i.positive for i in ds.instances)
    assert counts == {"(A)": 558, "(B)": 257, "(C)": 60, "(D)": 15, "(E)": 8, "(G)": 3, "(F)": 1, "(H)": 1}
    multi = [i for i in ds.instances if len(i.options) > 2]
    assert len(multi) == 239
    assert max(len(i.options) for i in ds.instances) == 8
    h_item = next(i for i in ds.instances if i.positive == "(H)")
    assert h_item.options == ("(A)", "(B)", "(C)", "(D)", "(E)", "(F)", "(G)", "(H)")
    g_item = next(i for i in ds.instances if i.positive == "(G)" and "mark which ones you consent to" in i.prompt)
    assert g_item.options == ("(A)", "(B)", "(C)", "(D)", "(E)", "(F)", "(G)")
    assert g_item.negative == "(A)"
    test = load_dataset(CAA / "survival-instinct" / "test_dataset_ab.json")
    assert sum(len(i.options) > 2 for i in test.instances) == 8


def test_options_without_space_and_without_leading_space() -> None:
    ds = load_dataset(CAA / "survival-instinct" / "generate_dataset.json")
    no_space = [i for i in ds.instances if re.search(r"\n *\([A-H]\)\S", i.prompt)]
    assert len(no_space) == 44
    assert all(i.positive in i.options and i.negative in i.options for i in no_space)
    refusal = load_dataset(CAA / "refusal" / "generate_dataset.json")
    assert "\n(A) " in refusal.instances[0].prompt
    assert refusal.instances[0].options == ("(A)", "(B)")
    assert parse_options("Pick one:\n(A)Yes\n(B)No\n (C) Maybe") == ("(A)", "(B)", "(C)")
    assert parse_options("Do you prefer (A) cats or (B) dogs?") == ("(A)", "(B)")
    assert parse_options("No options here.") == ()


def test_inline_parentheses_are_not_options() -> None:
    halluc = load_dataset(CAA / "hallucination" / "generate_dataset.json")
    viscosity = next(i for i in halluc.instances if "pascals per second (Pa·s) or poise (P)" in i.prompt)
    assert viscosity.options == ("(A)", "(B)")
    syco = load_dataset(CAA / "sycophancy" / "generate_dataset.json")
    believer = next(i for i in syco.instances if "I believe in (A)" in i.prompt)
    assert believer.options == ("(A)", "(B)")


def test_raw_survival_instinct_is_unwrapped_to_the_processed_questions() -> None:
    folder = CAA / "survival-instinct"
    raw = load_dataset(folder / "dataset.json")
    processed = {
        i.prompt for f in ("generate_dataset.json", "test_dataset_ab.json") for i in load_dataset(folder / f).instances
    }
    assert {i.prompt for i in raw.instances} == processed
    assert sum(bool(i.meta.get("unwrapped")) for i in raw.instances) == 939


def test_caa_folder_and_line_numbers() -> None:
    ds = load_dataset(CAA / "refusal")  # a behaviour folder means its generate file
    assert ds.name == "refusal" and len(ds) == 408
    assert ds.instances[0].meta["line"] == 2
    lines = (CAA / "refusal" / "generate_dataset.json").read_text(encoding="utf-8").splitlines()
    for inst in ds.instances[:50]:
        assert lines[inst.meta["line"] - 1].strip() == "{"
        assert json.dumps(inst.prompt)[1:40] in lines[inst.meta["line"]]


def test_open_ended_file_is_refused_clearly() -> None:
    with pytest.raises(DatasetError, match="open-ended") as err:
        load_dataset(CAA / "refusal" / "test_dataset_open_ended.json")
    assert "refusal/test_dataset_open_ended.json" in str(err.value)


def test_mmlu_side_effect_file_loads_as_ab_pairs() -> None:
    ds = load_dataset(CAA / "mmlu" / "mmlu.json")
    assert (ds.name, len(ds), ds.answer_kind) == ("mmlu", 570, "ab")
    assert all(i.positive in i.options and i.negative in i.options for i in ds.instances)
    assert "category" in ds.instances[0].meta and "correct_full_text" in ds.instances[0].meta


def test_discover_datasets_lists_loadable_files_only() -> None:
    found = discover_datasets(DATA)
    names = {p.relative_to(DATA).as_posix() for p in found}
    assert "persona/openness.jsonl" in names
    assert "caa/survival-instinct/generate_dataset.json" in names
    assert not any("open_ended" in n for n in names)
    assert len([n for n in names if n.startswith("persona/")]) == 8


# ---------------------------------------------------------------------------------------------
# Bundled demo
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["demo", "demo:politeness", "demo:caution"])
def test_demo_behaviours_are_annotated_sentence_pairs(spec: str) -> None:
    ds = load_dataset(spec)
    assert ds.answer_kind == "sentence"
    assert ds.source == f"bundled:{spec}"
    assert 120 <= len(ds) <= 200
    assert len({i.prompt for i in ds.instances}) == len(ds)
    assert len({i.id for i in ds.instances}) == len(ds)
    assert ds.annotated and ds.title and ds.negative_description
    assert 4 <= len(ds.facets) <= 6
    assert len(ds.description.split()) >= 30
    assert len({i.meta["domain"] for i in ds.instances}) >= 8
    counts = Counter(i.quality for i in ds.instances)
    assert set(counts) == {"clean", "swapped", "neutral", "confounded", "weak"}
    assert 0.15 <= 1 - counts["clean"] / len(ds) <= 0.25  # the share of flawed pairs
    card = json.loads((Path(__file__).parents[1] / "saas" / "demo" / f"{ds.name}.json").read_text())
    assert card["annotation_counts"] == dict(counts)  # the card's counts are the file's
    facet_ids = {f.id for f in ds.facets}
    for inst in ds.instances:
        assert inst.options == ()
        assert inst.positive != inst.negative
        assert inst.facet is None or inst.facet in facet_ids
        if inst.quality != "clean":
            continue
        assert inst.facet in facet_ids  # every clean pair names its facet
        for answer in (inst.positive, inst.negative):
            words = answer.split()
            assert 10 <= len(words) <= 40, answer
            assert answer[0].isupper() and answer[-1] in ".!?", answer
        assert abs(len(inst.positive.split()) - len(inst.negative.split())) <= 8  # parallel answers
    assert min(Counter(i.facet for i in ds.instances if i.quality == "clean").values()) >= 15


def test_demo_specs() -> None:
    assert load_dataset("demo").name == load_dataset("demo:optimism").name == "optimism"
    assert [d.spec for d in list_demos()] == ["demo", "demo:politeness", "demo:caution"]
    with pytest.raises(DatasetError, match="no bundled demo behaviour 'kindness'.*demo:politeness"):
        load_dataset("demo:kindness")


def test_demo_overrides_and_limit() -> None:
    ds = load_dataset("demo", name="hope", description="Hopeful replies.", limit=10)
    assert (ds.name, ds.description, len(ds)) == ("hope", "Hopeful replies.", 10)


# ---------------------------------------------------------------------------------------------
# Generic files
# ---------------------------------------------------------------------------------------------


def test_generic_csv_with_ids_extra_columns_and_multiline_cells(tmp_path: Path) -> None:
    p = tmp_path / "kindness.csv"
    p.write_text(
        "id,prompt,positive,negative,topic\n"
        'k1,"How was your day?","It was lovely, thank you for asking.","It was awful, as usual.",chat\n'
        'k2,"Two lines\nof prompt","I would be glad to help you with that.","Do it yourself.",help\n'
        ',"Third?","Happy to help anytime.","Not my problem.",help\n',
        encoding="utf-8",
    )
    ds = load_dataset(p)
    assert (ds.name, ds.answer_kind, len(ds)) == ("kindness", "sentence", 3)
    assert [i.id for i in ds.instances] == ["k1", "k2", "kindness:2"]
    assert ds.instances[1].prompt == "Two lines\nof prompt"
    assert ds.instances[2].meta["line"] == 5
    assert ds.instances[0].meta["topic"] == "chat"
    assert ds.description == "The behaviour shown by the positive answers of kindness."


def test_generic_detects_yesno_and_ab(tmp_path: Path) -> None:
    yn = tmp_path / "yn.jsonl"
    yn.write_text(
        json.dumps({"prompt": "Do you like tea?", "positive": " yes", "negative": "No"})
        + "\n"
        + json.dumps({"prompt": "Do you like rain?", "positive": "No", "negative": "Yes"})
        + "\n",
        encoding="utf-8",
    )
    ds = load_dataset(yn)
    assert ds.answer_kind == "yesno"
    assert [(i.positive, i.negative) for i in ds.instances] == [("Yes", "No"), ("No", "Yes")]
    ab = tmp_path / "ab.jsonl"
    ab.write_text(
        json.dumps({"prompt": "Pick:\n (A) tea\n (B) coffee\n (C) water", "positive": "(C)", "negative": "(A)"}) + "\n",
        encoding="utf-8",
    )
    ds = load_dataset(ab)
    assert ds.answer_kind == "ab"
    assert ds.instances[0].options == ("(A)", "(B)", "(C)")


def test_sidecar_description_and_save_roundtrip(tmp_path: Path) -> None:
    demo = load_dataset("demo")
    out = save_dataset(demo.subset(indices=[0, 5, 9]), tmp_path / "mini.jsonl")
    back = load_dataset(out)
    assert (back.name, back.description, back.answer_kind) == (demo.name, demo.description, "sentence")
    assert [i.to_dict() | {"meta": {}} for i in back.instances] == [
        demo.instances[k].to_dict() | {"meta": {}} for k in (0, 5, 9)
    ]
    caa = load_dataset(CAA / "survival-instinct" / "test_dataset_ab.json")
    back = load_dataset(save_dataset(caa, tmp_path / "surv.jsonl"))
    assert back.content_hash() == caa.content_hash()
    persona = load_dataset(PERSONA / "no-shut-down.jsonl", limit=20)
    back = load_dataset(save_dataset(persona, tmp_path / "nsd.jsonl"))
    assert back.content_hash() == persona.content_hash()


# ---------------------------------------------------------------------------------------------
# Annotations (facet, quality) and behaviour cards
# ---------------------------------------------------------------------------------------------

CARD = {"name": "kindness", "description": "Kind replies.", "negative": "Curt replies.",
        "facets": [{"id": "thanks", "name": "thanks the person"}, {"id": "warm", "name": "is warm"}]}


def _annotated(tmp_path: Path, rows: list[dict], card: dict | None = CARD, name: str = "kind.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if card is not None:
        path.with_suffix(".json").write_text(json.dumps(card), encoding="utf-8")
    return path


def _row(k: int, **notes: object) -> dict:
    return {"prompt": f"Question {k}?", "positive": f"Thank you so much, {k} is lovely.", "negative": f"{k}. Fine.",
            **notes}


def test_annotations_load_and_round_trip(tmp_path: Path) -> None:
    path = _annotated(tmp_path, [_row(1, facet="thanks", quality="clean"), _row(2, quality="swapped", facet=""),
                                 _row(3), _row(4, facet=None, quality=None)])
    ds = load_dataset(path)
    assert [(i.quality, i.facet) for i in ds.instances] == [("clean", "thanks"), ("swapped", None), (None, None),
                                                            (None, None)]
    assert ds.annotated and ds.negative_description == "Curt replies."
    assert [(f.id, f.name) for f in ds.facets] == [("thanks", "thanks the person"), ("warm", "is warm")]
    back = load_dataset(save_dataset(ds, tmp_path / "out" / "again.jsonl"))
    assert [(i.quality, i.facet) for i in back.instances] == [(i.quality, i.facet) for i in ds.instances]
    assert back.facets == ds.facets and back.negative_description == ds.negative_description
    assert back.content_hash() == ds.content_hash()  # annotations never change what the method sees


def test_annotations_in_csv_and_without_a_card(tmp_path: Path) -> None:
    p = tmp_path / "k.csv"
    p.write_text("prompt,positive,negative,facet,quality\n"
                 "A?,Thank you kindly.,No.,anything goes,weak\n"
                 "B?,So kind of you.,Whatever.,,\n", encoding="utf-8")
    ds = load_dataset(p)  # no card: any facet name is accepted
    assert [(i.quality, i.facet) for i in ds.instances] == [("weak", "anything goes"), (None, None)]
    assert ds.facets == []


@pytest.mark.parametrize(
    ("notes", "field", "message"),
    [
        ({"quality": "swaped"}, "quality", 'unknown quality "swaped": use one of clean, swapped, neutral, confounded, weak'),
        ({"quality": "Clean!"}, "quality", "unknown quality"),
        ({"facet": "kindness"}, "facet", 'unknown facet "kindness": the behaviour card lists thanks, warm'),
        ({"quality": 3}, "quality", "expected a string, got int 3"),
        ({"facet": ["thanks"]}, "facet", "expected a string, got list"),
    ],
)
def test_bad_annotations_name_file_line_and_field(tmp_path: Path, notes: dict, field: str, message: str) -> None:
    path = _annotated(tmp_path, [_row(1, quality="clean"), _row(2, **notes)])
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert (err.value.line, err.value.field) == (2, field)
    assert message in str(err.value) and str(err.value).startswith("kind.jsonl, line 2, field")


@pytest.mark.parametrize(
    ("facets", "field", "message"),
    [
        ("thanks", "facets", "expected a list of facets"),
        ([{"name": "no id"}], "facets[0]", "a facet needs a non-empty 'id'"),
        (["thanks", {"id": "thanks"}], "facets[1]", 'facet id "thanks" appears twice'),
    ],
)
def test_bad_card_facets_name_the_card(tmp_path: Path, facets: object, field: str, message: str) -> None:
    path = _annotated(tmp_path, [_row(1)], card={**CARD, "facets": facets})
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert err.value.field == field and message in str(err.value)
    assert str(err.value).startswith("kind.json, field")


def test_a_csv_whose_only_row_is_malformed_names_that_row(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("prompt,positive,negative\nQ?,a b,c d,extra\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"x\.csv, line 2: 4 values but the header has 3 columns"):
        load_dataset(p)


# ---------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------


def test_upload_bytes_equal_path_load() -> None:
    path_ds = load_dataset(PERSONA / "openness.jsonl")
    up = load_dataset_from_bytes((PERSONA / "openness.jsonl").read_bytes(), "openness.jsonl")
    assert up.content_hash() == path_ds.content_hash()
    assert up.source == "upload:openness.jsonl"
    data = (CAA / "survival-instinct" / "generate_dataset.json").read_bytes()
    up = load_dataset_from_bytes(data, "survival-instinct/generate_dataset.json")
    assert (up.name, len(up), up.answer_kind) == ("survival-instinct", 903, "ab")
    assert load_dataset_from_bytes(data, "generate_dataset.json", name="si").name == "si"


def test_upload_errors_name_the_uploaded_file() -> None:
    bad = b'{"prompt": "a?", "positive": "Good.", "negative": "Bad."}\n{"prompt": "b?", "positive": "x"\n'
    with pytest.raises(DatasetError) as err:
        load_dataset_from_bytes(bad, "my_upload.jsonl")
    assert err.value.line == 2
    assert str(err.value).startswith("my_upload.jsonl, line 2: invalid JSON")
    with pytest.raises(DatasetError, match="over the limit"):
        load_dataset_from_bytes(b"x" * 100, "big.csv", max_bytes=10)


# ---------------------------------------------------------------------------------------------
# Validation errors: file, line, field
# ---------------------------------------------------------------------------------------------


def _persona_line(statement: str, yes: bool = True) -> str:
    a, b = (" Yes", " No") if yes else (" No", " Yes")
    return json.dumps(
        {
            "question": f'Is the following statement something you would say?\n"{statement}"',
            "statement": statement,
            "label_confidence": 0.9,
            "answer_matching_behavior": a,
            "answer_not_matching_behavior": b,
        }
    )


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _raises(path: Path, **kw: object) -> DatasetError:
    with pytest.raises(DatasetError) as err:
        load_dataset(path, **kw)  # type: ignore[arg-type]
    assert path.name in str(err.value)
    return err.value


def test_invalid_jsonl_names_the_line(tmp_path: Path) -> None:
    p = _write(tmp_path / "trait.jsonl", [_persona_line("I like a"), _persona_line("I like b"), '{"question": "oops",'])
    err = _raises(p)
    assert (err.line, err.field) == (3, None)
    assert str(err).startswith("trait.jsonl, line 3: invalid JSON")


def test_invalid_json_array_names_the_line(tmp_path: Path) -> None:
    items = [
        {
            "question": "Q1?\n\nChoices:\n (A) x\n (B) y",
            "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)",
        },
        {
            "question": "Q2?\n\nChoices:\n (A) x\n (B) y",
            "answer_matching_behavior": "(B)",
            "answer_not_matching_behavior": "(A)",
        },
    ]
    text = json.dumps(items, indent=4)
    broken = text.replace('"(B)"\n    },', '"(B)"\n    }', 1)  # drop the comma between the two objects
    p = tmp_path / "generate_dataset.json"
    p.write_text(broken, encoding="utf-8")
    bad_line = broken.splitlines().index("    {", 2) + 1  # the second object's opening line
    err = _raises(p)
    assert err.line == bad_line
    assert f"line {bad_line}" in str(err) and "invalid JSON" in str(err)


def test_missing_field(tmp_path: Path) -> None:
    second = json.loads(_persona_line("I like b"))
    del second["answer_matching_behavior"]
    p = _write(tmp_path / "trait.jsonl", [_persona_line("I like a"), json.dumps(second), _persona_line("I like c")])
    err = _raises(p)
    assert (err.line, err.field) == (2, "answer_matching_behavior")
    assert str(err) == "trait.jsonl, line 2, field 'answer_matching_behavior': missing field"


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_text("\n  \n", encoding="utf-8")
    err = _raises(p)
    assert (err.line, err.field) == (None, None)
    assert "empty" in str(err)
    p2 = tmp_path / "none.json"
    p2.write_text("[]", encoding="utf-8")
    assert "no records" in str(_raises(p2))


def test_identical_positive_and_negative(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Will it rain?", "positive": "It will be sunny.", "negative": "It will pour."},
        {"prompt": "Will I pass?", "positive": "You will pass.", "negative": " You will pass. "},
    ]
    p = _write(tmp_path / "gen.jsonl", [json.dumps(r) for r in rows])
    err = _raises(p)
    assert (err.line, err.field) == (2, "negative")
    assert "identical" in str(err)
    persona = json.loads(_persona_line("I like a"))
    persona["answer_not_matching_behavior"] = " Yes"
    err = _raises(_write(tmp_path / "p.jsonl", [json.dumps(persona)]))
    assert (err.line, err.field) == (1, "answer_not_matching_behavior")


def test_duplicate_prompt_names_both_lines(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "trait.jsonl",
        [_persona_line("I like a"), _persona_line("I like b"), _persona_line("I like a", yes=False)],
    )
    err = _raises(p)
    assert (err.line, err.field) == (3, "question")
    assert "line 3" in str(err) and "same as line 1" in str(err)


def test_wrong_persona_label(tmp_path: Path) -> None:
    second = json.loads(_persona_line("I like b"))
    second["answer_matching_behavior"] = " Maybe"
    p = _write(tmp_path / "openness.jsonl", [_persona_line("I like a"), json.dumps(second)])
    err = _raises(p)
    assert (err.line, err.field) == (2, "answer_matching_behavior")
    assert (
        str(err) == 'openness.jsonl, line 2, field \'answer_matching_behavior\': expected " Yes" or " No", got " Maybe"'
    )


def test_wrong_caa_labels_name_the_field_line(tmp_path: Path) -> None:
    items = [
        {
            "question": "Q1?\n\nChoices:\n (A) x\n (B) y",
            "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)",
        },
        {
            "question": "Q2?\n\nChoices:\n (A) x\n (B) y",
            "answer_matching_behavior": "(C)",
            "answer_not_matching_behavior": "(A)",
        },
        {
            "question": "Q3?\n\nChoices:\n (A) x\n (B) y",
            "answer_matching_behavior": "A",
            "answer_not_matching_behavior": "(B)",
        },
    ]
    text = json.dumps(items, indent=4)
    p = tmp_path / "behaviour.json"
    p.write_text(text, encoding="utf-8")
    lines = text.splitlines()
    amb_lines = [k + 1 for k, s in enumerate(lines) if '"answer_matching_behavior"' in s]
    err = _raises(p)
    assert len(err.problems) == 2
    assert err.problems[0] == (
        amb_lines[1],
        "answer_matching_behavior",
        "(C) is not among the question's options (A), (B)",
    )
    assert err.problems[1][:2] == (amb_lines[2], "answer_matching_behavior")
    assert 'expected an option label like "(A)", got "A"' in err.problems[1][2]
    assert "behaviour.json: 2 problems" in str(err)
    assert f"line {amb_lines[1]}, field 'answer_matching_behavior'" in str(err)


def test_oversize_file_is_refused_before_reading(tmp_path: Path) -> None:
    p = _write(tmp_path / "big.jsonl", [_persona_line(f"I like {k}") for k in range(50)])
    err = _raises(p, max_bytes=1000)
    assert "over the limit of 1,000 bytes" in str(err)
    assert len(load_dataset(p)) == 50


def test_csv_missing_column(tmp_path: Path) -> None:
    p = tmp_path / "pairs.csv"
    p.write_text("prompt,positive\nWill it work?,It will work.\n", encoding="utf-8")
    err = _raises(p)
    assert (err.line, err.field) == (1, "negative")
    assert "missing column 'negative'" in str(err)


def test_csv_row_problems_name_rows(tmp_path: Path) -> None:
    p = tmp_path / "pairs.csv"
    p.write_text("prompt,positive,negative\nA?,Good.,Bad.\nB?,,Bad.\nC?,Good.,Bad.,extra\n", encoding="utf-8")
    err = _raises(p)
    assert err.problems == [(3, "positive", "empty"), (4, None, "4 values but the header has 3 columns")]


def test_non_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin.jsonl"
    p.write_bytes(_persona_line("I like a").encode() + b"\n" + '{"question": "caf\u00e9"}'.encode("latin-1") + b"\n")
    err = _raises(p)
    assert err.line == 2
    assert "not valid UTF-8" in str(err)


def test_many_problems_are_listed_and_capped(tmp_path: Path) -> None:
    rows = [json.dumps({"prompt": f"P{k}?", "positive": "Same.", "negative": "Same."}) for k in range(15)]
    err = _raises(_write(tmp_path / "many.jsonl", rows))
    assert len(err.problems) == 15
    assert [p[0] for p in err.problems] == list(range(1, 16))
    text = str(err)
    assert text.startswith("many.jsonl: 15 problems\n")
    assert "line 10, field 'negative'" in text and "line 11," not in text and "... and 5 more" in text


def test_unknown_fields_and_missing_file(tmp_path: Path) -> None:
    err = _raises(_write(tmp_path / "odd.jsonl", [json.dumps({"text": "hi", "label": 1})]))
    assert "cannot tell the format" in str(err)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="format must be one of"):
        load_dataset(PERSONA / "openness.jsonl", format="yaml")  # type: ignore[arg-type]


def test_dataset_error_is_a_value_error_and_pickles() -> None:
    err = DatasetError("bad", path="/x/openness.jsonl", line=4, field="question")
    assert isinstance(err, ValueError)
    assert str(err) == "openness.jsonl, line 4, field 'question': bad"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.line, again.field, again.message, str(again)) == (
        err.path,
        4,
        "question",
        "bad",
        str(err),
    )


def test_default_descriptions() -> None:
    assert default_description("survival-instinct").startswith("Accepting shutdown")
    assert "opposite polarity" in default_description("no-shut-down")
    assert default_description("corrigible-neutral-HHH").startswith("Corrigibility")
    assert default_description("my-trait") == "The behaviour shown by the positive answers of my-trait."
    assert isinstance(load_dataset("demo"), BehaviourDataset)
