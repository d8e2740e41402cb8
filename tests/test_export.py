"""Export / import round trips: safetensors + JSON (exact) and llama.cpp GGUF control vectors."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from saas.export import load_gguf, load_vector, save_gguf, save_vector
from saas.steering import SteeringVector


@pytest.fixture()
def vec() -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    return SteeringVector({15: torch.randn(576, generator=g) * 7.3, 3: torch.randn(576, generator=g)}, "SAAS",
                          model_fingerprint="abc123", dataset_hash="d41d", meta={"temperature": 0.5, "kappa": 0.5})


def test_safetensors_round_trip_is_exact(tmp_path: Path, vec: SteeringVector) -> None:
    st = save_vector(vec, tmp_path / "vectors" / "saas")
    assert st == tmp_path / "vectors" / "saas.safetensors" and st.is_file()
    meta = json.loads((tmp_path / "vectors" / "saas.json").read_text())
    assert meta["method"] == "SAAS" and meta["layers"] == [3, 15] and meta["meta"]["temperature"] == 0.5
    for path in (tmp_path / "vectors" / "saas", st, tmp_path / "vectors" / "saas.json"):
        back = load_vector(path)
        assert back.layers == vec.layers
        assert all(torch.equal(back.vectors[k], vec.vectors[k]) for k in vec.layers)
        assert (back.method, back.model_fingerprint, back.dataset_hash, back.meta) == (
            vec.method, vec.model_fingerprint, vec.dataset_hash, vec.meta)


def test_safetensors_alone_carries_the_metadata(tmp_path: Path, vec: SteeringVector) -> None:
    save_vector(vec, tmp_path / "v.safetensors")
    (tmp_path / "v.json").unlink()
    back = load_vector(tmp_path / "v")
    assert back.method == "SAAS" and back.meta == vec.meta
    assert torch.equal(back.vectors[15], vec.vectors[15])
    with pytest.raises(FileNotFoundError):
        load_vector(tmp_path / "missing")


def test_gguf_control_vector_round_trip(tmp_path: Path, vec: SteeringVector) -> None:
    path = save_gguf(vec, tmp_path / "saas", model_hint="llama")
    assert path.suffix == ".gguf"
    # What llama.cpp / repeng read: architecture, hint, count and 1-D F32 "direction.{layer}" tensors
    # with OUR layer index unchanged (direction.N = output of 0-based decoder layer N).
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    hint = reader.get_field("controlvector.model_hint")
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    count = reader.get_field("controlvector.layer_count")
    assert int(count.parts[count.data[0]][0]) == 2
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {"direction.3", "direction.15"}
    for layer in vec.layers:
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and t.n_elements == 576
        np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), vec.numpy(layer))
    back = load_gguf(path)
    assert back.layers == vec.layers and back.method == "SAAS" and back.meta["model_hint"] == "llama"
    assert all(torch.equal(back.vectors[k], vec.vectors[k]) for k in vec.layers)


def test_gguf_refuses_layer_zero(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layer 0"):
        save_gguf(SteeringVector.from_array(np.ones(4), 0, "CAA"), tmp_path / "v.gguf")


def test_gguf_written_by_another_tool_loads(tmp_path: Path) -> None:
    """A file laid out like repeng's export_gguf (no saas metadata)."""
    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "mistral")
    writer.add_uint32("controlvector.layer_count", 2)
    dirs = {5: np.arange(8, dtype=np.float32), 6: -np.arange(8, dtype=np.float32)}
    for layer, d in dirs.items():
        writer.add_tensor(f"direction.{layer}", d)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = load_gguf(path)
    assert back.method == "gguf" and back.meta["model_hint"] == "mistral" and back.layers == [5, 6]
    np.testing.assert_array_equal(back.numpy(6), dirs[6])


def test_gguf_rejects_a_model_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="not a control vector"):
        load_gguf(path)


# --------------------------------------------------------------------------------------------
# `saas export` (a run folder written the way `saas run` writes it; no model needed)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    from saas.pipeline import RunConfig

    run = tmp_path / "run"
    g = torch.Generator().manual_seed(1)
    for method, layer in (("saas", 15), ("caa", 15), ("pca-diff", 0)):
        save_vector(SteeringVector.from_array(torch.randn(576, generator=g), layer, method), run / "vectors" / method)
    (run / "config.json").write_text(json.dumps(RunConfig(layer=15).to_dict()))
    (run / "summary.json").write_text(json.dumps({"methods": ["caa", "pca-diff", "saas"]}))
    (run / "split.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    return run


def _read_direction(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(str(path))
    f = reader.get_field("general.architecture")
    arch = bytes(f.parts[f.data[0]]).decode()
    return arch, {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}


def test_cli_export_gguf_reads_back_with_the_gguf_package(run_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from saas.cli import main

    out = tmp_path / "gguf"
    assert main(["export", "--run", str(run_dir), "--method", "saas,caa", "--format", "gguf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--control-vector-scaled" in printed
    for method in ("saas", "caa"):
        arch, tensors = _read_direction(out / f"{method}.gguf")
        assert arch == "controlvector" and list(tensors) == ["direction.15"]
        np.testing.assert_array_equal(tensors["direction.15"], load_vector(run_dir / "vectors" / method).numpy(15))
    # one method: --out is the file (suffix added)
    assert main(["export", "--run", str(run_dir), "--method", "saas", "--out", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one.gguf").is_file()
    # one method into an existing folder
    assert main(["export", "--run", str(run_dir), "--method", "caa", "--out", str(out)]) == 0
    assert load_gguf(out / "caa.gguf").layers == [15]


def test_cli_export_safetensors(run_dir: Path, tmp_path: Path) -> None:
    from saas.cli import main

    out = tmp_path / "st"
    assert main(["export", "--run", str(run_dir), "--method", "saas,pca-diff", "--format", "safetensors", "--out", str(out)]) == 0
    for method in ("saas", "pca-diff"):
        back, orig = load_vector(out / method), load_vector(run_dir / "vectors" / method)
        assert back.layers == orig.layers and all(torch.equal(back.vectors[k], orig.vectors[k]) for k in orig.layers)
        assert (out / f"{method}.json").is_file()


def test_cli_export_errors_are_clear(run_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from saas.cli import main

    assert main(["export", "--run", str(run_dir), "--method", "saas,bipo", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no vector for bipo" in err and "caa, pca-diff, saas" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing written when one method is missing
    assert main(["export", "--run", str(run_dir), "--method", "pca-diff", "--out", str(tmp_path / "y")]) == 2
    assert "layer 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["export", "--run", str(run_dir), "--method", "saas,caa", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "nowhere"), "--method", "saas", "--out", str(tmp_path / "z")]) == 2
    assert "not a run folder" in capsys.readouterr().err
