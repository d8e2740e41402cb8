"""Alignment metric, splits and sweeps. Fast unit tests first, then the embedded model."""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch

from saas.activations import extract_activations
from saas.data import Instance
from saas.evaluation import (
    AnswerLogprobs,
    alignment,
    alpha_sweep,
    answer_logprobs,
    best_layer,
    best_temperature,
    candidate_answers,
    infer_answer_kind,
    instance_scores,
    layer_sweep,
    model_scores,
    neutral_kl,
    split_indices,
    temperature_sweep,
)
from saas.models import LoadedModel, load_model
from saas.prompts import encode
from saas.steering import SteeringVector

# --------------------------------------------------------------------------------------------
# unit tests (no model)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 97, 1000])
def test_split_indices_disjoint_covering_deterministic(n: int) -> None:
    tr, va, te = split_indices(n, seed=3)
    allx = np.concatenate([tr, va, te])
    assert sorted(allx.tolist()) == list(range(n))  # disjoint and covering
    for a, b in zip((tr, va, te), split_indices(n, seed=3)):
        np.testing.assert_array_equal(a, b)
    if n >= 3:
        assert len(tr) and len(va) and len(te)
    if n == 10:
        assert (len(tr), len(va), len(te)) == (7, 2, 1)
    if n == 1000:
        assert (len(tr), len(va), len(te)) == (700, 200, 100)
        assert not np.array_equal(tr, split_indices(n, seed=4)[0])


def test_split_indices_rejects_bad_ratios() -> None:
    with pytest.raises(ValueError):
        split_indices(10, 0, (0.5, 0.5))
    with pytest.raises(ValueError):
        split_indices(10, 0, (1.0, -0.1, 0.1))


def _lp(sums: list[float], n_tokens: int = 1) -> AnswerLogprobs:
    return AnswerLogprobs("x", [f"a{k}" for k in range(len(sums))],
                          [np.full(n_tokens, s / n_tokens) for s in sums])


def test_instance_scores_single_token_two_and_multi_option() -> None:
    p, mass, diff = instance_scores(_lp([math.log(0.3), math.log(0.1)]), "yesno")
    assert p == pytest.approx(0.75) and mass == pytest.approx(0.4) and diff == pytest.approx(math.log(3))
    # Multi-option CAA item: P(y+) over ALL options; mass = sum over options.
    p, mass, diff = instance_scores(_lp([math.log(0.2), math.log(0.1), math.log(0.2)], n_tokens=2), "ab")
    assert p == pytest.approx(0.4) and mass == pytest.approx(0.5) and diff == pytest.approx(math.log(2))


def test_instance_scores_sentence_uses_mean_token_logprob() -> None:
    lp = AnswerLogprobs("x", ["p", "n"], [np.array([-1.0, -3.0]), np.array([-2.0, -2.0, -5.0])])
    p, mass, diff = instance_scores(lp, "sentence")
    assert diff == pytest.approx(-2.0 - (-3.0))
    assert p == pytest.approx(1 / (1 + math.exp(-1.0))) and math.isnan(mass)
    with pytest.raises(ValueError):
        instance_scores(lp, "essay")


def test_candidates_and_kind_inference() -> None:
    inst = Instance("q", "Pick.\n (A) x\n (B) y\n (C) z", "(B)", "(A)", ("(A)", "(B)", "(C)"))
    assert candidate_answers(inst) == ["(B)", "(A)", "(C)"]
    assert infer_answer_kind([inst]) == "ab"
    assert infer_answer_kind([Instance("q", "Is it?", "Yes", "No")]) == "yesno"
    assert infer_answer_kind([Instance("q", "How?", "Fine, thanks.", "Badly.")]) == "sentence"


# --------------------------------------------------------------------------------------------
# embedded model


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model("default")


def _demo_pairs() -> list[Instance]:
    path = resources.files("saas") / "demo" / "optimism.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Instance(r["id"], r["prompt"], r["positive"], r["negative"]) for r in rows]


@pytest.fixture(scope="module")
def demo() -> dict[str, list[Instance]]:
    """20 training and 10 held-out optimism pairs, picked by a seeded permutation (seed 0)."""
    pairs = _demo_pairs()
    perm = np.random.default_rng(0).permutation(len(pairs))
    return {"train": [pairs[i] for i in perm[:20]], "test": [pairs[i] for i in perm[20:30]]}


@pytest.fixture(scope="module")
def acts(lm: LoadedModel, demo: dict[str, list[Instance]]):  # type: ignore[no-untyped-def]
    return extract_activations(lm, demo["train"])


@pytest.fixture(scope="module")
def caa15(acts) -> SteeringVector:  # type: ignore[no-untyped-def]
    return SteeringVector.from_array(acts.diffs(15).mean(0), 15, "CAA")


AB_ITEMS = [
    Instance("ab:0", "Which of these is a fruit?\n\nChoices:\n (A) A car\n (B) An apple\n (C) A chair",
             "(B)", "(A)", ("(A)", "(B)", "(C)")),
    Instance("ab:1", "Would you rather help a stranger or ignore them?\n\nChoices:\n (A) Help them\n (B) Ignore them",
             "(A)", "(B)", ("(A)", "(B)")),
]
YN_ITEMS = [Instance("yn:0", "Do you enjoy sunny days? Answer with Yes or No.", "Yes", "No")]


@pytest.mark.model
def test_answer_logprobs_batched_equals_single(lm: LoadedModel, demo: dict[str, list[Instance]], caa15: SteeringVector) -> None:
    """Rows of very different lengths share a left-padded batch; steering starts per row."""
    items = demo["test"][:1] + AB_ITEMS[:1] + YN_ITEMS
    batched = answer_logprobs(lm, items, vector=caa15, alpha=1.0, batch_size=16)
    single = answer_logprobs(lm, items, vector=caa15, alpha=1.0, batch_size=1)
    for b, s in zip(batched, single):
        assert b.answers == s.answers
        for tb, ts in zip(b.token_logprobs, s.token_logprobs):
            np.testing.assert_allclose(tb, ts, atol=2e-4, rtol=0)  # float32 padding noise


@pytest.mark.model
def test_scored_tokens_follow_the_read_rule(lm: LoadedModel) -> None:
    lps = answer_logprobs(lm, AB_ITEMS + YN_ITEMS)
    for inst, lp in zip(AB_ITEMS + YN_ITEMS, lps):
        for answer, toks in zip(lp.answers, lp.token_logprobs):
            enc = encode(lm.tokenizer, inst.prompt, answer)
            assert len(toks) == enc.read_index - enc.answer_start + 1
            assert (toks <= 0).all()
    assert lps[0].answers == ["(B)", "(A)", "(C)"]  # y+, y-, the remaining option


@pytest.mark.model
def test_alignment_on_ab_with_a_multi_option_item(lm: LoadedModel) -> None:
    res = alignment(lm, AB_ITEMS, "ab")
    lps = answer_logprobs(lm, AB_ITEMS)
    s0 = lps[0].sums
    assert len(s0) == 3
    assert res.prob[0] == pytest.approx(math.exp(s0[0]) / np.exp(s0).sum(), rel=1e-9)
    assert res.mass[0] == pytest.approx(np.exp(s0).sum(), rel=1e-9)
    s1 = lps[1].sums
    assert res.prob[1] == pytest.approx(math.exp(s1[0]) / np.exp(s1).sum(), rel=1e-9)
    assert 0 < res.mass_mean <= 1 and 0 < res.mean < 1
    assert list(res.to_frame().columns) == ["id", "prob", "mass"]


@pytest.mark.model
def test_steering_covers_the_last_prompt_token(lm: LoadedModel, demo: dict[str, list[Instance]], caa15: SteeringVector) -> None:
    """The first answer token is predicted at the last prompt token: it must move under steering,
    and alpha 0 must equal no vector at all, bit for bit."""
    items = demo["test"][:1]
    base = answer_logprobs(lm, items)
    zero = answer_logprobs(lm, items, vector=caa15, alpha=0.0)
    steered = answer_logprobs(lm, items, vector=caa15, alpha=2.0)
    for b, z, s in zip(base, zero, steered):
        assert all(np.array_equal(x, y) for x, y in zip(b.token_logprobs, z.token_logprobs))
        assert b.token_logprobs[0][0] != s.token_logprobs[0][0]


@pytest.mark.model
def test_caa_moves_alignment_in_order_on_held_out_pairs(lm: LoadedModel, demo: dict[str, list[Instance]], caa15: SteeringVector) -> None:
    """20 training / 10 held-out optimism pairs, CAA at layer 15 (DESIGN.md field notes measured
    0.44 / 0.55 / 0.65 on another split). The measured values are printed, not tuned for."""
    df = alpha_sweep(lm, demo["test"], "sentence", {"CAA": caa15}, [-1.0, 0.0, 1.0])
    got = dict(zip(df["alpha"], df["alignment"]))
    print(f"CAA layer 15, 10 held-out pairs: alignment at -1/0/+1 = {got[-1.0]:.3f} / {got[0.0]:.3f} / {got[1.0]:.3f}")
    assert got[-1.0] < got[0.0] < got[1.0]
    assert df["mass"].isna().all()  # sentences have no mass


@pytest.mark.model
def test_alpha_sweep_shares_alpha_zero(lm: LoadedModel, demo: dict[str, list[Instance]], caa15: SteeringVector) -> None:
    calls: list[tuple[int, int]] = []
    other = SteeringVector.from_array(-caa15.numpy(), 15, "neg")
    df = alpha_sweep(lm, AB_ITEMS, "ab", {"CAA": caa15, "neg": other}, [0.0, 1.0],
                     progress=lambda d, t, m: calls.append((d, t)))
    assert list(df.columns) == ["method", "alpha", "alignment", "mass", "n"]
    assert len(df) == 4 and calls[-1] == (3, 3)  # alpha 0 once + 2 methods x alpha 1
    zero = df[df["alpha"] == 0.0]
    assert zero["alignment"].nunique() == 1 and zero["mass"].notna().all()


@pytest.mark.model
def test_model_scores_match_alignment_at_alpha_zero(lm: LoadedModel, demo: dict[str, list[Instance]]) -> None:
    items = demo["test"][:2]
    logit_diff, conf = model_scores(lm, items, "sentence")
    res = alignment(lm, items, "sentence")
    np.testing.assert_allclose(conf, res.prob, rtol=1e-12)
    np.testing.assert_allclose(conf, 1 / (1 + np.exp(-logit_diff)), rtol=1e-9)
    ld_ab, conf_ab = model_scores(lm, YN_ITEMS)
    lp = answer_logprobs(lm, YN_ITEMS)[0]
    assert ld_ab[0] == pytest.approx(lp.sums[0] - lp.sums[1])
    assert (ld_ab[0] > 0) == (conf_ab[0] > 0.5)


@pytest.mark.model
def test_layer_and_temperature_sweeps(lm: LoadedModel, acts, demo: dict[str, list[Instance]]) -> None:  # type: ignore[no-untyped-def]
    val = demo["test"][:1]
    train_idx = list(range(acts.n))
    df = layer_sweep(lm, acts, val, "sentence", train_idx, [5, 15])
    assert list(df.columns) == ["method", "layer", "alpha", "alignment", "mass", "score"]
    assert len(df) == 4
    for layer in (5, 15):
        part = df[df["layer"] == layer].set_index("alpha")
        assert part.loc[1.0, "score"] == pytest.approx(part.loc[1.0, "alignment"] - part.loc[-1.0, "alignment"])
    assert best_layer(df) in (5, 15)
    with pytest.raises(ValueError, match="training"):
        layer_sweep(lm, acts, demo["train"][:1], "sentence", train_idx, [15])

    diffs = acts.diffs(15)
    imp = np.linspace(0.0, 10.0, acts.n)
    elig = np.ones(acts.n, dtype=bool)
    elig[:5] = False
    tdf = temperature_sweep(lm, val, "sentence", diffs, imp, elig, 15, [0.1, 1e6])
    assert list(tdf.columns) == ["method", "temperature", "alpha", "alignment", "mass", "ess", "score"]
    ess = tdf.groupby("temperature")["ess"].first()
    assert ess[1e6] == pytest.approx(15.0, rel=1e-4)  # uniform over the 15 eligible
    assert ess[0.1] < 2.0  # nearly one-hot
    assert best_temperature(tdf) in (0.1, 1e6)


@pytest.mark.model
def test_neutral_kl(lm: LoadedModel, caa15: SteeringVector) -> None:
    from saas.evaluation import NEUTRAL_TEXTS

    texts = NEUTRAL_TEXTS[:3]
    assert neutral_kl(lm, caa15, 0.0, texts) == 0.0
    k1, k2 = neutral_kl(lm, caa15, 1.0, texts), neutral_kl(lm, caa15, 2.0, texts)
    print(f"neutral KL of CAA layer 15: alpha 1 -> {k1:.4f}, alpha 2 -> {k2:.4f}")
    assert 0.0 < k1 < k2


def test_alignment_result_frame_is_a_dataframe() -> None:
    from saas.evaluation import AlignmentResult

    r = AlignmentResult(["a", "b"], np.array([0.2, 0.8]), None, "sentence", 1.0, "CAA")
    assert r.mean == pytest.approx(0.5) and r.mass_mean is None
    assert isinstance(r.to_frame(), pd.DataFrame) and r.to_frame()["mass"].isna().all()
    assert r.to_dict()["alignment"] == pytest.approx(0.5)
    assert torch.is_tensor(torch.as_tensor(r.prob))


def _oracle_alignment(lm: LoadedModel, inst: Instance, kind: str, vec: np.ndarray | None, alpha: float,
                      layer: int) -> float:
    """Alignment of one instance from bare transformers forwards, written out independently: the chat
    template applied by the tokenizer, the answer appended as text, log_softmax over the logits, the
    scored tokens (a label up to its letter; a word or sentence: all its tokens), and a plain forward
    hook that adds alpha * v to decoder layer ``layer``'s output from the last prompt token on."""
    tok = lm.tokenizer
    prefix = tok.apply_chat_template([{"role": "user", "content": inst.prompt}], add_generation_prompt=True,
                                     tokenize=False)
    n_prompt = len(tok(prefix, add_special_tokens=False)["input_ids"])
    answers = [inst.positive, inst.negative] + [o for o in inst.options if o not in (inst.positive, inst.negative)]
    logps = []
    for answer in answers:
        ids = tok(prefix + answer, add_special_tokens=False)["input_ids"]
        targets = list(range(n_prompt, len(ids)))
        if kind == "ab":  # up to and including the letter token; ")" carries no choice
            letter = max(k for k in targets if any(ch.isalpha() for ch in tok.decode([ids[k]])))
            targets = [k for k in targets if k <= letter]
        handle = None
        if vec is not None:
            def hook(_m, _i, out):  # type: ignore[no-untyped-def]
                h = out[0] if isinstance(out, tuple) else out
                h = h.clone()
                h[:, n_prompt - 1:, :] += alpha * torch.as_tensor(vec, dtype=h.dtype)
                return (h, *out[1:]) if isinstance(out, tuple) else h
            handle = lm.model.model.layers[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = lm.model(torch.tensor([ids])).logits[0].float()
        finally:
            if handle is not None:
                handle.remove()
        lsm = torch.log_softmax(logits, dim=-1)
        logps.append(np.array([float(lsm[k - 1, ids[k]]) for k in targets]))
    if kind == "sentence":
        return float(1.0 / (1.0 + np.exp(-(logps[0].mean() - logps[1].mean()))))
    sums = np.array([lp.sum() for lp in logps])
    return float(np.exp(sums[0]) / np.exp(sums).sum())


@pytest.mark.model
@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_alignment_equals_a_bare_forward_for_yesno_ab_and_sentence(lm: LoadedModel, demo: dict[str, list[Instance]],
                                                                   caa15: SteeringVector, alpha: float) -> None:
    v = caa15.numpy(15)
    cases = [("yesno", YN_ITEMS + [Instance("yn:1", "Is the sea salty? Answer with Yes or No.", "No", "Yes")]),
             ("ab", AB_ITEMS), ("sentence", demo["test"][:3])]
    for kind, items in cases:
        got = alignment(lm, items, kind, vector=caa15 if alpha else None, alpha=alpha)
        expected = [_oracle_alignment(lm, inst, kind, v if alpha else None, alpha, 15) for inst in items]
        np.testing.assert_allclose(got.prob, expected, atol=2e-4, rtol=0, err_msg=kind)
        if alpha:  # the steered numbers really differ from the unsteered ones
            base = [_oracle_alignment(lm, inst, kind, None, 0.0, 15) for inst in items]
            assert np.max(np.abs(np.array(base) - np.array(expected))) > 1e-3, kind
