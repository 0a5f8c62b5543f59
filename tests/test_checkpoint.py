import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmcompress
from mmcompress.errors import CheckpointError
from mmcompress.io.checkpoint import (
    _file_entry,
    _lean_rebuild,
    _plain_meta_tensors,
    _rebuild,
    save_checkpoint,
)
from mmcompress.methods import METHODS, StageContext
from mmcompress.recipe import load_recipe


def _entries(path):
    """A safetensors file's header entries, as loading reads them once."""
    from mmcompress.io.tensor_file import TensorFile

    with TensorFile(path) as file:
        return file.entries


def _quantize(adapter, **cfg):
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", **cfg}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(adapter, stage.config, StageContext(progress=False))


def _outputs(adapter):
    torch.manual_seed(1)
    images = [torch.rand(40, 30, 3).numpy() for _ in range(3)]
    return adapter.encode_images(images), adapter.encode_texts(["a cat", "two dogs on a sofa"])


@pytest.mark.parametrize("cfg", [{"bits": 8}, {"bits": 4, "group_size": 16},
                                 {"bits": 3, "group_size": 8, "symmetric": False}])
def test_save_load_gives_bitwise_identical_outputs(tiny_clip, tmp_path, cfg):
    _quantize(tiny_clip, **cfg)
    before = _outputs(tiny_clip)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    loaded = mmcompress.load(tmp_path)
    for a, b in zip(before, _outputs(loaded), strict=True):
        assert torch.equal(a, b)
    manifest = json.loads((tmp_path / "mmcompress.json").read_text())
    assert manifest["modules"]["text_model.embeddings.token_embedding"]["type"] == "QuantEmbedding"


@pytest.fixture
def saved(tiny_clip, tmp_path):
    _quantize(tiny_clip, bits=4, group_size=16)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    return tmp_path


def test_format_version_must_be_a_readable_integer(saved):
    path = saved / "mmcompress.json"
    manifest = json.loads(path.read_text())
    assert manifest["format_version"] == 2
    for bad in (True, 1.0, "2", 3):  # True and 1.0 compared equal to 1
        path.write_text(json.dumps({**manifest, "format_version": bad}))
        with pytest.raises(CheckpointError, match="format_version .* is not supported"):
            mmcompress.load(saved)


def test_format_1_description_digest_is_unchanged():
    """Folders of format 1 keep their digest: of the model description alone."""
    import hashlib

    from mmcompress.io.checkpoint import DESCRIBED, description_digest

    manifest = {"adapter": "hf_clip", "architecture": {"a": 1}, "structure": {},
                "modules": {}, "format_version": 1}
    old = hashlib.sha256(json.dumps({k: manifest[k] for k in DESCRIBED}, sort_keys=True,
                                    separators=(",", ":")).encode()).hexdigest()
    assert description_digest(manifest) == old
    assert description_digest({**manifest, "assets": []}) == old
    assert description_digest({**manifest, "format_version": 2}) != old


@pytest.mark.parametrize("key,value", [("base_model", "minilm"), ("stages", [{"kind": "prune"}]),
                                       ("mmcompress_version", "0.0.1")])
def test_edits_anywhere_in_the_manifest_are_refused(saved, key, value):
    """Editing `base_model` (which fidelity is measured against) or the stage history was
    accepted: only the model description was digested."""
    path = saved / "mmcompress.json"
    manifest = json.loads(path.read_text())
    assert manifest[key] != value
    path.write_text(json.dumps({**manifest, key: value}))
    with pytest.raises(CheckpointError, match="altered: its contents are not those saved"):
        mmcompress.load(saved)


@pytest.mark.parametrize("kind", ["folder", "loop", "deep"])
def test_manifest_that_is_not_a_json_file_is_a_checkpoint_error(saved, kind):
    path = saved / "mmcompress.json"
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path)
    else:
        path.write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="no mmcompress.json file|nested too deeply"):
        mmcompress.load(saved)


def test_a_manifest_number_too_long_to_read_is_a_checkpoint_error(saved):
    path = saved / "mmcompress.json"
    text = path.read_text()
    path.write_text(text.replace('"format_version": ', '"format_version": 1' + "0" * 5000 + ", "
                                 '"was": ', 1))
    with pytest.raises(CheckpointError, match="corrupted"):
        mmcompress.load(saved)


def test_weights_that_cannot_be_read_are_a_checkpoint_error(saved, monkeypatch):
    from pathlib import Path

    real_open = Path.open

    def denied(self, *args, **kwargs):
        if self.name == "model.safetensors":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read: Permission"):
        mmcompress.load(saved)


def test_truncated_weights_are_refused(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or altered"):
        mmcompress.load(saved)


@pytest.mark.parametrize("name", ["model.safetensors", "buffers.safetensors"])
def test_altered_files_are_refused(saved, name):
    path = saved / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{name} is truncated or altered"):
        mmcompress.load(saved)


def test_corrupted_manifest_is_refused(saved):
    (saved / "mmcompress.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        mmcompress.load(saved)


@pytest.mark.parametrize("key,value,message", [
    ("adapter", "bogus", "names the model kind 'bogus', which is none of"),
    ("adapter", ["clip"], "names the model kind \\['clip'\\], which is none of"),
    ("architecture", "clip", "'architecture' is missing or not a mapping"),
    ("modules", [1], "'modules' is missing or not a mapping"),
])
def test_manifest_fields_of_the_wrong_kind_are_named(saved, key, value, message):
    _rewrite_weights(saved, load_file(str(saved / "model.safetensors")))  # no digest to compare
    manifest = json.loads((saved / "mmcompress.json").read_text())
    manifest[key] = value
    (saved / "mmcompress.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        mmcompress.load(saved)


def test_manifest_shape_mismatch_is_refused(saved):
    _rewrite_weights(saved, load_file(str(saved / "model.safetensors")))  # no digest to compare
    manifest = json.loads((saved / "mmcompress.json").read_text())
    entry = manifest["modules"]["text_model.encoder.layers.0.mlp.fc1"]
    entry["group_size"] = 8
    (saved / "mmcompress.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not match"):
        mmcompress.load(saved)


@pytest.mark.parametrize("edit", [
    # the group edges move, yet every tensor keeps its shape
    lambda m: m["modules"]["text_model.encoder.layers.0.mlp.fc1"].update(group_size=17),
    lambda m: m["architecture"].update(note=1),
    lambda m: m.pop("structure"),
])
def test_an_edited_model_description_is_refused_even_when_the_shapes_still_fit(saved, edit):
    manifest = json.loads((saved / "mmcompress.json").read_text())
    edit(manifest)
    (saved / "mmcompress.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="mmcompress.json is altered"):
        mmcompress.load(saved)


@pytest.mark.parametrize("field,value,why", [
    ("bits", -1, "bits must be an integer from 2 to 8, got -1"),
    ("bits", 9, "bits must be an integer from 2 to 8, got 9"),
    ("group_size", 0, "group_size must be a positive integer or none, got 0"),
    ("group_size", 16.0, "group_size must be a positive integer or none, got 16.0"),
    ("symmetric", "no", "symmetric must be true or false, got 'no'"),
])
def test_a_manifest_that_cannot_be_built_is_a_checkpoint_error(saved, field, value, why):
    """Any failure while rebuilding is the manifest's fault; a grid the recipe would refuse
    (group_size 0 used to load as per-channel) is one."""
    _rewrite_weights(saved, load_file(str(saved / "model.safetensors")))
    manifest = json.loads((saved / "mmcompress.json").read_text())
    manifest["modules"]["text_model.encoder.layers.0.mlp.fc1"][field] = value
    (saved / "mmcompress.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"mmcompress.json describes cannot be rebuilt "
                                              f".*{re.escape(why)}"):
        mmcompress.load(saved)


def test_a_tensor_of_another_dtype_is_refused_not_cast(saved):
    weights = load_file(str(saved / "model.safetensors"))
    key = "text_model.encoder.layers.0.mlp.fc1.scale"
    weights[key] = weights[key].to(torch.int64)
    _rewrite_weights(saved, weights)
    with pytest.raises(CheckpointError, match=f"{key} is int64 .*the model holds float32"):
        mmcompress.load(saved)


def test_a_stray_or_reshaped_buffer_is_refused(saved):
    buffers = load_file(str(saved / "buffers.safetensors"))
    _rewrite_buffers(saved, {**buffers, "stray": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys \\['stray'\\]"):
        mmcompress.load(saved)
    key = sorted(buffers)[0]
    _rewrite_buffers(saved, {**buffers, key: buffers[key][..., :3].contiguous()})
    with pytest.raises(CheckpointError, match=f"{key} is int64 \\[1, 3\\]"):
        mmcompress.load(saved)


def test_a_sparse_mask_keeping_other_than_its_values_is_refused(tiny_clip, tmp_path):
    stage = load_recipe({"stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}]})
    METHODS[("prune", "magnitude")].apply(tiny_clip, stage.stages[0].config,
                                          StageContext(progress=False))
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    weights = load_file(str(tmp_path / "model.safetensors"))
    key = next(k for k in sorted(weights) if k.endswith("mask_bits"))
    weights[key] = weights[key].clone()
    weights[key][0] ^= 1  # one weight more or less than the layer's values
    _rewrite_weights(tmp_path, weights)
    with pytest.raises(CheckpointError, match="mask_bits keeps .* weights, but the layer holds"):
        mmcompress.load(tmp_path)


def test_size_before_saving_is_the_saved_files_size(tiny_clip, tmp_path):
    from mmcompress.evaluation.evaluate import saved_size_bytes

    _quantize(tiny_clip, bits=4, group_size=16)
    before = saved_size_bytes(tiny_clip.model)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    assert before == (tmp_path / "model.safetensors").stat().st_size


def test_nan_weights_are_refused(tiny_clip, tmp_path):
    with torch.no_grad():
        tiny_clip.model.visual_projection.weight[0, 0] = float("nan")
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        mmcompress.load(tmp_path)


def test_nan_in_a_buffer_outside_the_state_dict_is_refused(tmp_path):
    from mmcompress.adapters.fusion import FusionAdapter
    from mmcompress.models.fusion import FusionClassifier

    adapter = FusionAdapter(FusionClassifier(
        fusion="late", dim=16, heads=2, hidden=16, vocab=64, max_text_len=12, text_layers=1,
        fusion_layers=1, image_channels=[4, 8], image_layers=1, audio_layers=1, n_mels=16,
        audio_samples=1024))
    with torch.no_grad():
        adapter.model.audio.frontend.window[3] = float("nan")
    save_checkpoint(adapter, tmp_path, "fusion", [])
    with pytest.raises(CheckpointError, match="buffer 'audio.frontend.window' holds NaN"):
        mmcompress.load(tmp_path)


def _non_persistent(model):
    return {f"{n}.{b}": t for n, m in model.named_modules() for b, t in m._buffers.items()
            if t is not None and b in m._non_persistent_buffers_set}


def test_saved_buffers_let_loading_skip_the_dense_build(tiny_clip, saved):
    """The position ids a state dict leaves out are saved beside it, so the model is built on
    the meta device and given only its saved size; they come back equal."""
    manifest = json.loads((saved / "mmcompress.json").read_text())
    lean = _lean_rebuild(saved, manifest, saved / "model.safetensors",
                         _entries(saved / "model.safetensors"), saved / "buffers.safetensors")
    assert lean is not None
    expected = _non_persistent(tiny_clip.model)
    assert expected and expected.keys() == _non_persistent(lean.model).keys()
    for key, tensor in _non_persistent(lean.model).items():
        assert not tensor.is_meta and torch.equal(tensor, expected[key])
    assert not any(t.is_meta for t in lean.model.state_dict().values())


def test_load_never_builds_the_architecture_in_memory(saved, monkeypatch):
    """`mmcompress.load` of a folder with buffers.safetensors builds on the meta device only."""
    import mmcompress.io.checkpoint as checkpoint

    build = checkpoint._rebuild

    def meta_only(folder, manifest, meta):
        assert meta, "built the architecture in memory"
        return build(folder, manifest, meta)

    monkeypatch.setattr(checkpoint, "_rebuild", meta_only)
    assert not any(t.is_meta for t in mmcompress.load(saved).model.state_dict().values())


def _drop_buffers_file(folder):
    manifest = json.loads((folder / "mmcompress.json").read_text())
    del manifest["buffers"]
    (folder / "buffers.safetensors").unlink()
    (folder / "mmcompress.json").write_text(json.dumps(manifest))


def _rewrite_weights(folder, weights):
    """Write `weights` as the folder's weights file with a matching manifest entry (and no
    description digest, as in a format-1 folder written before it existed)."""
    save_file(weights, str(folder / "model.safetensors"))
    manifest = json.loads((folder / "mmcompress.json").read_text())
    manifest["weights"] = _file_entry(folder / "model.safetensors")
    manifest["format_version"] = 1
    (folder / "mmcompress.json").write_text(json.dumps(manifest))


def _rewrite_buffers(folder, buffers):
    save_file(buffers, str(folder / "buffers.safetensors"))
    manifest = json.loads((folder / "mmcompress.json").read_text())
    manifest["buffers"] = _file_entry(folder / "buffers.safetensors")
    (folder / "mmcompress.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change", ["no buffers file", "a buffer missing"])
def test_folders_without_every_buffer_load_the_old_way(tiny_clip, tmp_path, change):
    """A folder written before buffers.safetensors existed, or one lacking a buffer, is built
    in memory as before, with the same outputs."""
    _quantize(tiny_clip, bits=8)
    before = _outputs(tiny_clip)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    if change == "no buffers file":
        _drop_buffers_file(tmp_path)
    else:
        buffers = load_file(str(tmp_path / "buffers.safetensors"))
        buffers.pop(sorted(buffers)[0])
        _rewrite_buffers(tmp_path, buffers)
        manifest = json.loads((tmp_path / "mmcompress.json").read_text())
        weights = tmp_path / "model.safetensors"
        assert _lean_rebuild(tmp_path, manifest, weights, _entries(weights),
                             tmp_path / "buffers.safetensors") is None
    for a, b in zip(before, _outputs(mmcompress.load(tmp_path)), strict=True):
        assert torch.equal(a, b)


def test_a_tensor_attribute_made_at_construction_is_found(saved):
    manifest = json.loads((saved / "mmcompress.json").read_text())
    adapter = _rebuild(saved, manifest, meta=True)
    assert _plain_meta_tensors(adapter) == []
    adapter.model.text_model.table = torch.empty(3, device="meta")
    assert _plain_meta_tensors(adapter) == ["text_model.table"]


def test_an_architecture_the_meta_device_cannot_build_loads_the_old_way(tiny_clip, tmp_path,
                                                                        monkeypatch):
    import mmcompress.io.checkpoint as checkpoint

    _quantize(tiny_clip, bits=8)
    before = _outputs(tiny_clip)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    build = checkpoint._rebuild

    def no_meta(folder, manifest, meta):
        if meta:
            raise NotImplementedError("no meta kernel for some op")
        return build(folder, manifest, meta)

    monkeypatch.setattr(checkpoint, "_rebuild", no_meta)
    for a, b in zip(before, _outputs(mmcompress.load(tmp_path)), strict=True):
        assert torch.equal(a, b)


def test_finite_check_reads_every_slice():
    from mmcompress.adapters.base import all_finite

    t = torch.zeros(3, 7)
    assert all_finite(t, chunk=4)
    t[2, 6] = float("inf")  # in the last, short slice
    assert not all_finite(t, chunk=4)
    assert not all_finite(t.T, chunk=4)  # not contiguous


def test_tensor_file_reads_what_safetensors_wrote(tmp_path):
    from mmcompress.io.tensor_file import TensorFile

    tensors = {"f32": torch.randn(3, 5), "f16": torch.randn(4).half(),
               "bf16": torch.randn(2, 2).bfloat16(), "i8": torch.randint(-128, 127, (7,),
                                                                      dtype=torch.int8),
               "u8": torch.randint(0, 255, (2, 3), dtype=torch.uint8),
               "i64": torch.arange(6).view(2, 3), "bool": torch.rand(9) > 0.5,
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"format": "pt"})
    with TensorFile(tmp_path / "t.safetensors") as f:
        assert sorted(f.keys()) == sorted(tensors)
        for name, t in tensors.items():
            got = f.read(name)
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)


def _header(text: bytes) -> bytes:
    return len(text).to_bytes(8, "little") + text


@pytest.mark.parametrize("damage,message", [
    (lambda b: (10**9).to_bytes(8, "little") + b[8:], "header length"),
    (lambda b: b[:8] + b"x" * (len(b) - 8), "not JSON"),
    (lambda b: b[:-4], "outside the data"),
    (lambda b: _header(b"[" * 100_000), "not JSON"),  # too deep for the parser
    (lambda b: _header(b'{"w": {"data_offsets": [0, 1' + b"0" * 5000 + b"]}}"), "not JSON"),
    (lambda b: b.replace(b'"shape":[4,4]', b'"shape":[-4,-4]'), "not a whole number"),
    (lambda b: b.replace(b'"shape":[4,4]', b'"shape":[4.0,4]'), "not a whole number"),
])
def test_tensor_file_refuses_a_damaged_file(tmp_path, damage, message):
    from mmcompress.io.tensor_file import TensorFile

    path = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(4, 4)}, str(path))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        TensorFile(path)


@pytest.mark.parametrize("offsets,tail,message", [
    ([[0, 16], [0, 16]], b"", "overlap or leave gaps"),  # both tensors read the same bytes
    ([[0, 16], [32, 48]], b"", "overlap or leave gaps"),
    ([[0, 16], [16, 32]], b"\0" * 4, "bytes follow the last tensor"),
])
def test_tensor_file_refuses_overlapping_or_stray_data(tmp_path, offsets, tail, message):
    """Two tensors over the same bytes were read without a word (safetensors refuses them)."""
    from mmcompress.io.tensor_file import TensorFile

    header = {name: {"dtype": "F32", "shape": [4], "data_offsets": span}
              for name, span in zip("ab", offsets, strict=True)}
    raw = json.dumps(header).encode()
    size = max(end for _, end in offsets)
    path = tmp_path / "t.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * size + tail)
    with pytest.raises(CheckpointError, match=message):
        TensorFile(path)


def test_weights_file_with_a_missing_or_extra_tensor_is_refused(tiny_clip, tmp_path):
    from mmcompress.io.checkpoint import _check_layout

    state = {k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, str(tmp_path / "a.safetensors"))
    with pytest.raises(CheckpointError, match=f"missing keys \\['{dropped}'\\]"):
        _check_layout(tiny_clip.model.state_dict(), _entries(tmp_path / "a.safetensors"),
                      tmp_path / "a.safetensors")
    save_file({**state, "stray": torch.zeros(1)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected keys \\['stray'\\]"):
        _check_layout(tiny_clip.model.state_dict(), _entries(tmp_path / "b.safetensors"),
                      tmp_path / "b.safetensors")


def test_models_whose_state_dict_is_not_their_own_tensors_load_whole():
    from mmcompress.io.checkpoint import _streamable

    def keys(m):
        return set(m.state_dict().keys())

    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    assert _streamable(plain, keys(plain))
    hooked = torch.nn.Sequential(torch.nn.Linear(2, 2))
    hooked.register_load_state_dict_post_hook(lambda module, keys: None)
    assert not _streamable(hooked, keys(hooked))
    renamed = torch.nn.Sequential(torch.nn.Linear(2, 2))
    renamed._register_state_dict_hook(
        lambda module, state, prefix, meta: state.__setitem__(prefix + "extra", torch.zeros(1)))
    assert not _streamable(renamed, keys(renamed))


def test_a_model_built_in_python_is_not_taken_for_a_built_in_spec_of_its_name(tiny_clip,
                                                                              tiny_clip_folder,
                                                                              tmp_path):
    """An output of an adapter object recorded `adapter.name` as its base model: for a fusion
    model 'fusion', the built-in late-fusion model, which `evaluate` then loaded (training it
    if need be) and measured fidelity against (0.954 where the true fidelity was 1.0)."""
    from _helpers import FAST_EVAL, toy_image_data

    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}], "evaluate": FAST_EVAL}
    data = toy_image_data()
    mmcompress.compress(tiny_clip, recipe, out=tmp_path / "object", data=data, progress=False)
    manifest = json.loads((tmp_path / "object" / "mmcompress.json").read_text())
    assert manifest["base_model"] is None
    result = mmcompress.evaluate(tmp_path / "object", data, FAST_EVAL, progress=False)
    assert "fidelity_cosine" not in result["metrics"]
    assert any("built in Python" in note for note in result["notes"])
    mmcompress.compress(tiny_clip_folder, recipe, out=tmp_path / "spec", data=data,
                        progress=False)
    manifest = json.loads((tmp_path / "spec" / "mmcompress.json").read_text())
    assert manifest["base_model"] == str(tiny_clip_folder.resolve())
    result = mmcompress.evaluate(tmp_path / "spec", data, FAST_EVAL, progress=False)
    assert result["metrics"]["fidelity_cosine"] > 0.99


def test_every_module_type_is_registered_by_the_registry_alone():
    """Sparse and factored layers registered themselves only when a method module had been
    imported: `mmcompress inspect` of such a folder, and the peak-memory probe's subprocess,
    failed with 'unknown module type'."""
    import subprocess
    import sys

    from mmcompress.methods import METHODS  # noqa: F401  (every method: every module type)
    from mmcompress.modules.registry import MODULE_TYPES

    code = ("from mmcompress.modules.registry import MODULE_TYPES\n"
            "print(*sorted(MODULE_TYPES))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == sorted(MODULE_TYPES), done.stderr


def test_hf_tokenizer_missing_from_output_is_refused(tiny_clip, tmp_path):
    """An output recording a Hugging Face tokenizer but lacking its folder was read with the
    word-hash tokenizer instead, without a word."""
    arch = {**tiny_clip.architecture(), "tokenizer": "hf"}
    with pytest.raises(CheckpointError, match="tokenizer/ folder is missing"):
        type(tiny_clip).from_architecture(arch, tmp_path)


def test_an_output_records_every_stage_its_in_memory_model_went_through(tiny_clip, tmp_path):
    """Compressing one adapter object twice saved only the second run's stages, although
    the weights held the first's too."""
    from _helpers import toy_image_data

    for i, tower in enumerate(("text", "vision")):
        mmcompress.compress(tiny_clip, {"stages": [{"quantize": {
            "method": "rtn", "bits": 8, "targets": [tower]}}], "evaluate": {
            "max_samples": 4, "metrics": ["params"]}}, out=tmp_path / f"o{i}",
            data=toy_image_data(), progress=False)
    manifest = json.loads((tmp_path / "o1" / "mmcompress.json").read_text())
    assert [s["config"]["targets"] for s in manifest["stages"]] == [["text"], ["vision"]]
    report = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert [s["config"]["targets"] for s in report["stages"]] == [["vision"]]  # this run's


def test_a_format_2_weights_file_without_the_manifest_digest_is_refused(saved):
    path = saved / "model.safetensors"
    save_file(load_file(str(path)), str(path), metadata={"format": "pt"})
    manifest_path = saved / "mmcompress.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["weights"] = _file_entry(path)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="lacks the digest"):
        mmcompress.load(saved)
