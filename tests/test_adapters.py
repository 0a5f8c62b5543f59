import json
import shutil

import numpy as np
import pytest
import torch
from _helpers import tiny_clip_config, toy_image_data
from torch import nn
from transformers import SiglipConfig, SiglipModel

import mmcompress
from mmcompress.adapters.random_specs import RANDOM_MODELS
from mmcompress.errors import CheckpointError, UserError
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.methods import StageContext, run_stages
from mmcompress.model_specs import load_model
from mmcompress.modules.sparse import SparseQuantConv2d
from mmcompress.recipe import CalibrationConfig, load_recipe


def _tiny_siglip() -> SiglipConfig:
    return SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, vocab_size=100, max_position_embeddings=16,
                         pad_token_id=1, eos_token_id=1, bos_token_id=None),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
    )


def test_clip_folder_towers_and_normalised_embeddings(tiny_clip_folder):
    adapter = load_model(tiny_clip_folder)
    assert adapter.name == "clip"
    assert set(adapter.towers()) == {"vision", "text", "projector"}
    emb = adapter.encode_texts(["a red car", "two cats"])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    img = adapter.encode_images([torch.rand(50, 40, 3).numpy(), torch.rand(8, 8, 1).numpy()])
    assert img.shape == (2, 16)


def test_siglip_folder_loads_and_embeds(tmp_path):
    torch.manual_seed(0)
    SiglipModel(_tiny_siglip()).save_pretrained(tmp_path / "siglip")
    adapter = load_model(tmp_path / "siglip")
    assert adapter.name == "siglip" and set(adapter.towers()) == {"vision", "text"}
    tokens = adapter.text_tensors(["a dog"])
    assert tokens["input_ids"].shape[1] == 16  # SigLIP pads to its maximum length
    assert adapter.encode_images([torch.rand(32, 32, 3).numpy()]).shape == (1, 32)


def test_a_folder_without_tokenizer_files_says_its_texts_are_hashed(tiny_clip_folder, capsys,
                                                                     monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    load_model(tiny_clip_folder)
    assert "has no tokenizer files: texts are tokenized by a word hash" in capsys.readouterr().err


def test_square_images_of_the_models_size_are_still_resized_then_cropped():
    """A processor resizing the shorter edge to 40 and cropping 32 zooms into a 32×32 image
    as into any other; the image was passed through whole."""
    import torch.nn.functional as F

    from mmcompress.adapters.preprocess import images_to_tensor

    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    got = images_to_tensor([image], 32, [0.0] * 3, [1.0] * 3, "crop", "bilinear", resize_to=40)
    big = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(40, 40),
                        mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(got, big[:, :, 4:36, 4:36])


def test_uint8_images_are_read_as_0_to_255():
    from mmcompress.adapters.preprocess import images_to_tensor

    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    args = (16, [0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(images_to_tensor([image], *args),
                               images_to_tensor([image.astype(np.float32) / 255], *args))


def test_siglip_calibrates_on_every_text_position(tmp_path):
    """SigLIP runs its text tower without a mask and pools the last position, which is
    padding for a short text: every position reaches the embedding, so none is masked."""
    SiglipModel(_tiny_siglip()).save_pretrained(tmp_path / "siglip")
    adapter = load_model(tmp_path / "siglip")
    calib = adapter.calibration_data(toy_image_data(), samples=4, batch_size=4, seed=0)
    [batch] = calib.batches["text"]
    assert batch.token_mask.all() and batch.token_mask.shape[1] == 16


def test_architecture_rebuilds_the_same_structure(tiny_clip):
    rebuilt = type(tiny_clip).from_architecture(tiny_clip.architecture(), None)
    rebuilt.model.load_state_dict(tiny_clip.model.state_dict(), strict=True)
    texts = ["a photo of a dog"]
    assert torch.equal(rebuilt.encode_texts(texts), tiny_clip.encode_texts(texts))


def test_unsupported_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError, match="'llama' is not supported"):
        load_model(tmp_path)


def test_unknown_random_model_lists_known_ones():
    with pytest.raises(UserError, match="clip-vit-base-patch32"):
        load_model("random:resnet9000")


@pytest.mark.parametrize("family", ["clip", "siglip", "clip-squash-crop"])
def test_images_are_resized_as_the_folders_image_processor_does(tmp_path, family,
                                                                 tiny_clip_folder):
    """SigLIP's processor resizes the whole image to height × width; its images were
    centre-cropped like CLIP's (mean |difference| 0.27 on a 640×479 photo). A processor that
    resizes to height × width and then crops does both. A wide and a tall image, with and
    without the folder's preprocessor_config.json."""
    from PIL import Image
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    if family == "siglip":
        folder, proc = tmp_path / "siglip", SiglipImageProcessor(size={"height": 32, "width": 32})
        SiglipModel(_tiny_siglip()).save_pretrained(folder)
    elif family == "clip":
        folder = tiny_clip_folder
        proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        folder = tiny_clip_folder
        proc = CLIPImageProcessor(size={"height": 48, "width": 48}, do_center_crop=True,
                                  crop_size={"height": 32, "width": 32})
    bare = load_model(folder)
    proc.save_pretrained(folder)
    configured = load_model(folder)
    rng = np.random.default_rng(0)
    for shape in [(40, 90, 3), (90, 40, 3)]:
        pixels = rng.random(shape).astype(np.float32)
        smooth = np.cumsum(np.cumsum(pixels, 0), 1)  # large-scale structure a crop would cut
        smooth = (smooth / smooth.max()).astype(np.float32)
        image = Image.fromarray((smooth * 255).round().astype(np.uint8))
        expected = proc(images=image, return_tensors="pt")["pixel_values"]
        for adapter in (bare, configured) if family != "clip-squash-crop" else (configured,):
            got = adapter.image_tensor([np.asarray(image, dtype=np.float32) / 255])
            assert got.shape == expected.shape
            assert (got - expected).abs().mean() < 0.02, (family, shape)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["clip-vit-base-patch32", "siglip-base-patch16-224"])
def test_random_full_size_architectures(name):
    adapter = RANDOM_MODELS[name]()
    params = sum(p.numel() for p in adapter.model.parameters())
    assert params > 100e6
    runs = adapter.latency_inputs(1)
    assert set(runs) == {"image", "text"}
    with torch.inference_mode():
        assert runs["image"]().shape[0] == 1 and runs["text"]().shape[0] == 1


def test_siglip_prunes_with_wanda_quantizes_and_reloads(tmp_path):
    """SigLIP's patch embedding pads 'valid' (a string) and its pooling head is an
    nn.MultiheadAttention: calibration unfolds the former, quantization stores it, and the
    head's out_proj (never called as a module) is left alone."""
    torch.manual_seed(0)
    SiglipModel(_tiny_siglip()).save_pretrained(tmp_path / "siglip")
    adapter = load_model(tmp_path / "siglip")
    recipe = load_recipe({"stages": [{"prune": {"method": "wanda", "sparsity": 0.5}},
                                     {"quantize": {"method": "rtn", "bits": 4, "group_size": 16}}]})
    ctx = StageContext(data=toy_image_data(),
                       calibration=CalibrationConfig(samples=8, batch_size=4), progress=False)
    summaries = run_stages(adapter, recipe.stages, ctx)
    assert summaries[0]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    vision = adapter.model.vision_model
    assert isinstance(vision.embeddings.patch_embedding, SparseQuantConv2d)
    assert type(vision.head.attention.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    images = [torch.rand(32, 32, 3).numpy()]
    (tmp_path / "out").mkdir()
    save_checkpoint(adapter, tmp_path / "out", "siglip", [])
    loaded = mmcompress.load(tmp_path / "out")
    assert torch.equal(loaded.encode_images(images), adapter.encode_images(images))
    assert torch.equal(loaded.encode_texts(["a dog"]), adapter.encode_texts(["a dog"]))


def test_hf_folder_with_pickled_weights_is_refused(tmp_path):
    """Only safetensors are read: a pytorch_model.bin (a pickle) is never loaded."""
    torch.manual_seed(0)
    model = SiglipModel(_tiny_siglip())
    model.save_pretrained(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights only in pickled pytorch_model.*bin "
                       "files, which mmcompress never loads"):
        load_model(tmp_path / "bin")
    (tmp_path / "bin" / "pytorch_model.bin").unlink()  # no weights at all: the loader's words
    with pytest.raises(CheckpointError, match="only safetensors weights are read"):
        load_model(tmp_path / "bin")


def test_hf_folder_with_truncated_weights_is_a_checkpoint_error(tmp_path):
    torch.manual_seed(0)
    SiglipModel(_tiny_siglip()).save_pretrained(tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_model(tmp_path / "cut")


def test_grey_images_may_come_without_a_channel_axis(tiny_clip):
    rng = np.random.default_rng(0)
    grey = rng.random((20, 20), dtype=np.float32)
    torch.testing.assert_close(tiny_clip.encode_images([grey]),
                               tiny_clip.encode_images([grey[..., None]]))


def test_encoding_nothing_or_a_bad_shape_is_a_data_error(tiny_clip):
    from mmcompress.errors import DataError

    with pytest.raises(DataError, match="at least one text"):
        tiny_clip.encode_texts([])
    with pytest.raises(DataError, match="at least one image"):
        tiny_clip.encode_images([])
    with pytest.raises(DataError, match="H×W or H×W×C"):
        tiny_clip.encode_images([np.zeros((2, 3, 4, 5), dtype=np.float32)])


@pytest.mark.parametrize("name,text", [
    ("preprocessor_config.json", "{bad"),
    ("preprocessor_config.json", '{"image_mean": 5}'),
    ("config.json", None),  # a negative width: torch refuses to build it
])
def test_a_model_folder_with_a_broken_file_is_a_one_line_error(tiny_clip_folder, name, text):
    """These were internal errors (JSONDecodeError, TypeError, RuntimeError)."""

    path = tiny_clip_folder / name
    if text is None:
        config = json.loads(path.read_text())
        config["vision_config"]["hidden_size"] = -32
        text = json.dumps(config)
    path.write_text(text)
    with pytest.raises(CheckpointError, match="cannot be loaded as a clip model folder"):
        load_model(tiny_clip_folder)


def test_an_invalid_config_value_is_named_in_full(tiny_clip_folder):
    path = tiny_clip_folder / "config.json"
    config = json.loads(path.read_text())
    config["vision_config"]["num_attention_heads"] = 3  # 32 is no multiple of it
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"not a multiple of the number of attention "
                       r"heads \(3\)") as caught:
        load_model(tiny_clip_folder)
    assert "\n" not in str(caught.value)


def test_weights_of_another_width_name_the_first_mismatched_tensor(tiny_clip_folder, tmp_path):
    from transformers import CLIPModel

    wider = tiny_clip_config()
    wider.text_config.hidden_size = 64
    CLIPModel(wider).save_pretrained(tmp_path / "wider")
    shutil.copy(tmp_path / "wider" / "model.safetensors", tiny_clip_folder)
    with pytest.raises(CheckpointError, match=r"weight 'text_model\.\S+' in model\.safetensors "
                       r"has shape \[[^\]]*64\], but its config\.json makes it \[[^\]]*32\]"):
        load_model(tiny_clip_folder)
