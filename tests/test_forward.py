"""The forward engine: answer scores from the activation pass, the prompt cache, the public API.

Reference numbers always come from an independent computation: a plain left-padded full forward of
the causal LM (logits of every position, log-softmax, pick the answer tokens), written out here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import saas.forward as forward
from saas.activations import cached_activations, extract_activations
from saas.data import BehaviourDataset, Instance
from saas.evaluation import answer_logprobs, model_scores
from saas.forward import PromptCache, candidate_answers, forward_read, pad_left
from saas.models import LoadedModel, convert_default, wrap_model
from saas.prompts import encode

TOL = 2e-4  # float32 round-off of padded batches vs one text at a time


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded model's tokenizer (chat template included); its vocabulary sizes the tiny models."""
    return AutoTokenizer.from_pretrained(str(convert_default()))


def tiny_lm(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32) -> LoadedModel:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id)
    return wrap_model(LlamaForCausalLM(cfg).eval(), tokenizer, name=f"tiny-forward-{seed}-{layers}-{hidden}")


def mixed() -> list[Instance]:
    """Sentence, Yes/No, A/B (two- and three-option) answers, and answers that are prefixes of each other."""
    return [
        Instance("s1", "My exam is tomorrow. How will it go?", "You prepared well, so it will go great.", "It will probably go badly."),
        Instance("s2", "Will my flight be on time?", "Yes, it should leave right on schedule.", "It will be delayed."),
        Instance("yn", "Would you say you love new ideas? Answer with Yes or No.", "Yes", "No"),
        Instance("ab", "Pick one.\n\nChoices:\n (A) a cake now\n (B) two cakes later", "(A)", "(B)", ("(A)", "(B)")),
        Instance("ab3", "Pick one.\n\nChoices:\n (A) x\n (B) y\n (C) z", "(C)", "(A)", ("(A)", "(B)", "(C)")),
        Instance("p1", "Will it rain?", "It will", "It will not."),
        Instance("p2", "Is it sunny?", "Yes it is", "Yes"),
    ]


def reference_logprobs(lm: LoadedModel, inst: Instance) -> list[np.ndarray]:
    """Each candidate answer's scored-token log-probs from one plain full forward of its own text."""
    out = []
    for answer in candidate_answers(inst):
        enc = encode(lm.tokenizer, inst.prompt, answer)
        with torch.no_grad():
            logits = lm.model(torch.tensor([enc.ids])).logits[0].float()
        lsm = torch.log_softmax(logits, dim=-1)
        cols = range(enc.answer_start - 1, enc.read_index)
        out.append(np.array([float(lsm[q, enc.ids[q + 1]]) for q in cols]))
    return out


def assert_same_logprobs(got, insts: list[Instance], ref_fn) -> None:  # type: ignore[no-untyped-def]
    assert got is not None and [g.id for g in got] == [i.id for i in insts]
    for g, inst in zip(got, insts):
        assert g.answers == candidate_answers(inst)
        ref = ref_fn(inst)
        assert len(g.token_logprobs) == len(ref)
        for a, b in zip(g.token_logprobs, ref):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    return tmp_path


# --------------------------------------------------------------------------------------------
# tiny models (unit tier)


@pytest.mark.parametrize("strategy", ["shared_prefix", "naive"])
def test_extraction_scores_equal_a_plain_forward_on_a_tiny_llama(tokenizer, tmp_cache, strategy) -> None:
    lm = tiny_lm(tokenizer)
    insts = mixed()
    acts = extract_activations(lm, insts, batch_size=4, use_cache=False, strategy=strategy)
    assert_same_logprobs(acts.logprobs, insts, lambda inst: reference_logprobs(lm, inst))
    # and the engine's separate scoring pass agrees with the same-pass scores
    sep = answer_logprobs(lm, insts)
    for a, b in zip(acts.logprobs, sep):
        for x, y in zip(a.token_logprobs, b.token_logprobs):
            np.testing.assert_allclose(x, y, atol=TOL, rtol=0)


def _tiny_word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0} | {f"w{i}": i for i in range(1, 128)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", eos_token="w1", pad_token="w2")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gpt2", "gpt_neox"])
def test_extraction_scores_on_tiny_families(family, tmp_cache) -> None:
    """No chat template (plain "User: ... Assistant:" layout), every supported family."""
    from tiny_models import tiny_model

    lm = wrap_model(tiny_model(family), _tiny_word_tokenizer(), f"tiny-{family}")
    insts = [Instance("a", "w5 w6 w7 w8", "w10 w11 w12", "w13"), Instance("b", "w9 w5", "w20", "w21 w22"),
             Instance("c", "w30 w31 w32 w33 w34", "w40 w41", "w40 w42 w43")]
    for strategy in ("shared_prefix", "naive"):
        acts = extract_activations(lm, insts, batch_size=4, use_cache=False, strategy=strategy)
        assert_same_logprobs(acts.logprobs, insts, lambda inst: reference_logprobs(lm, inst))


def test_prepare_takes_model_scores_from_the_activation_pass(tokenizer, tmp_cache, monkeypatch) -> None:
    from saas.pipeline import RunConfig, prepare

    lm = tiny_lm(tokenizer, seed=1)
    insts = [i for i in mixed() if i.id.startswith("s") or i.id == "p1"]
    ds = BehaviourDataset("tiny", "a tiny behaviour", insts, "sentence")
    ref_ld, ref_conf = model_scores(lm, insts, "sentence")

    def no_second_pass(*_a, **_k):
        raise AssertionError("prepare ran a separate scoring pass")

    monkeypatch.setattr("saas.evaluation.answer_logprobs", no_second_pass)
    monkeypatch.setattr("saas.activations.answer_logprobs", no_second_pass)
    prepared = prepare(RunConfig(agents="none", batch_size=4), lm=lm, dataset=ds)
    np.testing.assert_allclose(prepared.logit_diff, ref_ld, atol=TOL, rtol=0)
    np.testing.assert_allclose(prepared.conf, ref_conf, atol=TOL, rtol=0)


def test_old_cache_files_without_scores_load_and_get_scores(tokenizer, tmp_cache) -> None:
    lm = tiny_lm(tokenizer, seed=2)
    insts = mixed()[:4]
    first = extract_activations(lm, insts, batch_size=4, scores=False)  # what older versions wrote
    assert first.logprobs is None and cached_activations(lm, insts).logprobs is None
    again = extract_activations(lm, insts, batch_size=4)
    assert again.from_cache and again.key == first.key
    np.testing.assert_array_equal(again.positive, first.positive)
    assert_same_logprobs(again.logprobs, insts, lambda inst: reference_logprobs(lm, inst))
    stored = cached_activations(lm, insts)  # the scores were added to the same file
    assert stored is not None and stored.logprobs is not None
    for a, b in zip(stored.logprobs, again.logprobs):
        for x, y in zip(a.token_logprobs, b.token_logprobs):
            np.testing.assert_array_equal(x, y)
    sub = stored.subset([2, 0])
    assert sub.ids == [insts[2].id, insts[0].id] and [lp.id for lp in sub.logprobs] == sub.ids


def test_extraction_from_a_prompt_cache_equals_the_forward_pass(tokenizer, tmp_cache) -> None:
    lm = tiny_lm(tokenizer, seed=3)
    insts = mixed()
    ref = extract_activations(lm, insts, batch_size=4, use_cache=False)
    got = extract_activations(lm, insts, batch_size=4, use_cache=False, prompt_cache=PromptCache(lm, insts, batch_size=3))
    assert got.meta["strategy"] == "prompt_cache"
    np.testing.assert_allclose(got.positive, ref.positive, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.negative, ref.negative, atol=1e-4, rtol=0)
    for a, b in zip(got.logprobs, ref.logprobs):
        for x, y in zip(a.token_logprobs, b.token_logprobs):
            np.testing.assert_allclose(x, y, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="other instances"):
        extract_activations(lm, insts[:2], use_cache=False, prompt_cache=PromptCache(lm, insts, batch_size=3))


def test_forward_read_targets_equal_full_logits(tokenizer) -> None:
    lm = tiny_lm(tokenizer, seed=4)
    rng = np.random.default_rng(0)
    seqs = [[int(t) for t in rng.integers(5, 1000, n)] for n in (7, 3, 5)]
    targets = [[(2, 11), (6, 12)], [(0, 13)], [(4, 14), (4, 15)]]
    res = forward_read(lm, seqs, [len(s) - 1 for s in seqs], targets)
    assert res.acts.shape == (3, lm.n_layers, lm.hidden_size)
    for s, t, got in zip(seqs, targets, res.logprobs):
        with torch.no_grad():
            lsm = torch.log_softmax(lm.model(torch.tensor([s])).logits[0].float(), dim=-1)
        np.testing.assert_allclose(got, [float(lsm[c, tok]) for c, tok in t], atol=1e-5, rtol=0)


def test_padding_helpers() -> None:
    ids, mask, pads = pad_left([[1, 2, 3], [4]], 0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]] and pads == [0, 2]
    assert forward.left_positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask = forward.pad_right([[1], [2, 3]], 9)
    assert ids.tolist() == [[1, 9], [2, 3]] and mask.tolist() == [[1, 0], [1, 1]]


def test_no_module_imports_private_names_of_another() -> None:
    """One engine with a public API: no ``from saas.x import _private`` and no ``module._private`` reach-ins."""
    import ast
    from pathlib import Path

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*(root / "saas").rglob("*.py"), *(root / "bench").glob("*.py")]:
        tree = ast.parse(path.read_text())
        modules = set()  # local names bound to saas modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saas"):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names if private(a.name)]
                if node.module == "saas":
                    modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                modules |= {a.asname for a in node.names if a.name.startswith("saas.") and a.asname}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and private(node.attr):
                offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not offenders, offenders


# --------------------------------------------------------------------------------------------
# the embedded model


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["shared_prefix", "naive"])
def test_extraction_scores_equal_model_scores_on_the_embedded_model(embedded, tmp_cache, strategy) -> None:
    """Sentence, Yes/No and A/B answers: the same-pass scores equal the separate computation."""
    insts = mixed()
    acts = extract_activations(embedded, insts, batch_size=4, use_cache=False, strategy=strategy)
    sep = answer_logprobs(embedded, insts)
    assert_same_logprobs(acts.logprobs, insts, lambda inst: sep[insts.index(inst)].token_logprobs)
    from saas.evaluation import model_scores_from_logprobs

    for kind, part in (("sentence", [0, 1, 5, 6]), ("yesno", [2]), ("ab", [3, 4])):
        items = [insts[k] for k in part]
        ld, conf = model_scores(embedded, items, kind)
        ld2, conf2 = model_scores_from_logprobs([acts.logprobs[k] for k in part], kind)
        np.testing.assert_allclose(ld2, ld, atol=TOL, rtol=0)
        np.testing.assert_allclose(conf2, conf, atol=TOL, rtol=0)
