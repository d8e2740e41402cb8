from __future__ import annotations

import time

import pytest
import torch
from tiny_models import CONFIGS, EXPECTED_PATH, tiny_model

from saas.models import (
    ModelLoadError,
    UnsupportedModelError,
    choose_device_dtype,
    find_layers,
    load_model,
    model_fingerprint,
)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_find_layers_on_each_family(family: str) -> None:
    model = tiny_model(family)
    layers, path = find_layers(model)
    assert path == EXPECTED_PATH[family]
    assert len(layers) == 3
    # The hooks we register on these layers see the residual stream: [B, T, d].
    seen = []
    handle = layers[1].register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).shape))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))
    handle.remove()
    assert seen == [torch.Size([1, 4, 32])]


def test_unhookable_model_names_what_was_tried() -> None:
    class NotALM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.Linear(2, 2)

    with pytest.raises(UnsupportedModelError) as err:
        find_layers(NotALM())
    assert "model.layers" in str(err.value) and "transformer.h" in str(err.value) and "gpt_neox.layers" in str(err.value)


def test_fingerprint_depends_on_weights() -> None:
    assert model_fingerprint(tiny_model("llama", 0), "x") != model_fingerprint(tiny_model("llama", 1), "x")
    assert model_fingerprint(tiny_model("llama", 0), "x") == model_fingerprint(tiny_model("llama", 0), "x")


def test_missing_model_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_hub_id_offline_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="could not load model 'someone/not-a-real-model'"):
        load_model("someone/not-a-real-model")


def test_local_folder_round_trip(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    raw = Tokenizer(models.WordLevel({f"w{i}": i for i in range(128)} | {"[UNK]": 0}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="w1").save_pretrained(tmp_path / "tiny")
    lm = load_model(str(tmp_path / "tiny"))
    assert lm.n_layers == 3 and lm.hidden_size == 32 and lm.layer_path == "model.layers"
    assert lm.tokenizer.padding_side == "left"


def test_device_dtype_defaults() -> None:
    device, dtype = choose_device_dtype()
    assert (device, dtype) == (("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32))
    assert choose_device_dtype("cpu", "bf16") == ("cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="unknown dtype"):
        choose_device_dtype("cpu", "int3")


@pytest.mark.model
def test_embedded_model_loads_fast_and_runs(embedded) -> None:
    t0 = time.perf_counter()
    again = load_model("default")
    seconds = time.perf_counter() - t0
    assert seconds < 60, f"reloading the converted model took {seconds:.1f} s"
    assert again.fingerprint == embedded.fingerprint
    assert embedded.n_layers == 30 and embedded.hidden_size == 576 and embedded.is_chat
    ids = embedded.tokenizer("Hello there", return_tensors="pt")
    with torch.no_grad():
        logits = embedded.model(**ids).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()
