import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mmcompress.data import Dataset, load_data
from mmcompress.errors import DataError


def _image(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(path)


def test_demo_data_is_held_out_digits():
    data = load_data("demo")
    assert data.task == "classification" and len(data) == 540
    assert data.load_image(0).shape == (8, 8, 1)
    assert len(data.all_texts()) == 10 * len(data.templates)


def test_class_folder_reader(tmp_path):
    for name in ("red_car", "dog"):
        (tmp_path / name).mkdir()
        for i in range(2):
            _image(tmp_path / name / f"{i}.png", i)
    data = load_data(tmp_path)
    assert data.task == "classification"
    assert data.class_names == ["dog", "red car"]
    assert data.labels == [0, 0, 1, 1]
    img = data.load_image(3)
    assert img.shape == (12, 10, 3) and img.min() >= 0 and img.max() <= 1


def test_coco_reader(tmp_path):
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    _image(tmp_path / "train2017" / "1.jpg")
    _image(tmp_path / "train2017" / "2.jpg", 1)
    coco = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
            "annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 2, "caption": "x"},
                            {"image_id": 1, "caption": "a small cat"}]}
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(coco))
    data = load_data(tmp_path)
    assert data.task == "retrieval"
    assert data.captions == [["a cat", "a small cat"], ["x"]]
    assert data.images[0].name == "1.jpg"
    for bad in (5, None, ""):  # 5 and None were internal errors (Path / int)
        coco["images"][1]["file_name"] = bad
        (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(coco))
        with pytest.raises(DataError, match=f"image 2 has file_name {bad!r}, not a file name"):
            load_data(tmp_path)


def test_unreadable_image_is_a_data_error(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "broken.jpg").write_bytes(b"not an image")
    data = load_data(tmp_path)
    with pytest.raises(DataError, match="cannot read image"):
        data.load_image(0)


@pytest.mark.parametrize("make", [
    lambda p: p / "missing",
    lambda p: (p / "empty").mkdir() or p / "empty",
    lambda p: (p / "bad.json").write_text("{") and p / "bad.json",
    lambda p: (p / "other.json").write_text('{"a": 1}') and p / "other.json",
])
def test_unknown_or_broken_data_is_refused(tmp_path, make):
    with pytest.raises(DataError):
        load_data(make(tmp_path))


@pytest.mark.integration
def test_shared_cifar10_and_tiny_coco(shared_data):
    cifar = load_data(shared_data / "cifar10" / "test")
    assert len(cifar.class_names) == 10 and len(cifar) == 8000
    assert cifar.load_image(0).shape == (32, 32, 3)
    coco = load_data(shared_data / "tiny_coco")
    assert coco.task == "retrieval" and len(coco) == 50
    assert sum(len(c) for c in coco.captions) == 250


def test_head_spreads_over_classes():
    data = load_data("demo")
    ordered = data.__class__(data.name, data.task, images=sorted(data.images, key=lambda _: 0),
                             labels=sorted(data.labels), class_names=data.class_names,
                             templates=data.templates)
    assert set(ordered.head(20).labels) == set(range(10))
    assert len(ordered.head(20)) == 20 and ordered.head(None) is ordered


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b"a,b,c\n1,2,3\n", "no known columns in its first line 'a,b,c'"),
    (b"score\tx\n\xff\xfe\n", "not UTF-8 text"),
])
def test_unreadable_table_says_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "pairs.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_data(path)


def test_class_folders_hold_images_in_subfolders_too(tmp_path):
    (tmp_path / "cat" / "sub").mkdir(parents=True)
    (tmp_path / "dog" / ".hidden").mkdir(parents=True)
    _image(tmp_path / "cat" / "1.png")
    _image(tmp_path / "cat" / "sub" / "2.PNG", 1)
    _image(tmp_path / "dog" / "1.jpg", 2)
    _image(tmp_path / "dog" / ".hidden" / "3.png", 3)
    data = load_data(tmp_path)
    assert data.labels == [0, 0, 1]


def test_16_bit_grey_images_keep_their_values(tmp_path):
    """Pillow's RGB conversion clips 16-bit grey at 255: every pixel would read as white."""
    grey = np.linspace(0, 65535, 12 * 10).reshape(12, 10).astype(np.uint16)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(grey).save(tmp_path / "a" / "x.png")
    _image(tmp_path / "b" / "y.png")
    img = load_data(tmp_path).load_image(0)
    np.testing.assert_allclose(img[..., 0], grey / 65535, atol=1e-6)


def test_float_images_keep_their_values_and_refuse_nan_and_out_of_range(tmp_path):
    """Pillow's RGB conversion turns a float image's NaN into 0 and its [0, 1] into black."""
    grey = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(grey, "F").save(tmp_path / "a" / "x.tiff")
    _image(tmp_path / "b" / "y.png")
    np.testing.assert_array_equal(load_data(tmp_path).load_image(0)[..., 0], grey)
    for bad, why in ((np.nan, "holds NaN or Inf"), (np.inf, "holds NaN or Inf"),
                     (255.0, "values from 0 to 255")):
        grey[3, 4] = bad
        Image.fromarray(grey, "F").save(tmp_path / "a" / "x.tiff")
        with pytest.raises(DataError, match=f"image .*x.tiff {why}|x.tiff is a float image "
                                            f"with {why}"):
            load_data(tmp_path).load_image(0)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    (tmp_path / "pairs.tsv").write_text("\ufeffscore\tsentence1\tsentence2\n0.9\ta\tb\n0.1\tc\td\n",
                                        encoding="utf-8")
    assert load_data(tmp_path / "pairs.tsv").scores == [0.9, 0.1]
    (tmp_path / "digits.csv").write_text("\ufefftext, label\nthree, 3\nseven,7\n",
                                         encoding="utf-8")
    data = load_data(tmp_path / "digits.csv")
    assert data.texts == ["three", "seven"] and data.labels == [3, 7]


def test_an_image_past_the_decompression_bomb_limit_is_a_data_error(tmp_path, monkeypatch):
    """PIL's DecompressionBombError is not an OSError: it was an internal error."""
    from mmcompress.data.dataset import load_image

    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64² is past 2 × this: an error
    with pytest.raises(DataError, match="cannot read image .*big.png"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # past this only: a warning, silenced
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).shape == (64, 64, 3)


@pytest.mark.parametrize("fields,message", [
    ({"task": "sts", "texts": ["a", "b"], "texts_b": ["c"], "scores": [1.0, 2.0]},
     "its columns differ in length"),
    ({"task": "sts", "texts": ["a", "b"], "texts_b": ["c", "d"], "scores": [1.0, float("nan")]},
     "a score is not a finite number"),
    ({"task": "classification", "images": [np.zeros((4, 4, 3), np.float32)], "labels": [2],
      "class_names": ["cat", "dog"], "templates": ["a {}"]}, "a label is outside 0..1"),
    ({"task": "caption"}, "task 'caption' is none of"),
])
def test_a_dataset_made_in_python_is_checked_before_use(fields, message):
    """NaN scores gave a Spearman of 1.0, and mismatched columns were cut silently."""
    from mmcompress.data import Dataset

    with pytest.raises(DataError, match=f"data 'mine': {message}"):
        Dataset("mine", **fields).check()


def test_dataset_check_reads_arrays_and_needs_every_column_of_its_task():
    from mmcompress.data import Dataset

    images = np.zeros((4, 4, 4, 3), np.float32)
    Dataset("arrays", "classification", images=images, labels=np.array([0, 1, 0, 1]),
            class_names=["a", "b"]).check()  # numpy columns: lengths, not truth values
    Dataset("big", "sts", texts=["a", "b"], texts_b=["c", "d"], scores=[1e308, 1e308]).check()
    with pytest.raises(DataError, match=r"columns differ in length \(images 4, labels 0\)"):
        Dataset("mine", "classification", images=list(images), labels=[]).check()
    with pytest.raises(DataError, match="a score is not a finite number"):
        Dataset("mine", "sts", texts=["a", "b"], texts_b=["c", "d"], scores=[1.0, None]).check()


def test_every_reader_and_named_spec_is_known_to_a_fresh_load_data(tmp_path):
    """The STS reader and the training splits registered themselves only when the sentence
    adapter or the trainer had been imported: `load_data` alone refused an STS file."""
    import subprocess
    import sys

    sts = tmp_path / "pairs.tsv"
    sts.write_text("4.0\ta cat sits\ta cat is sitting\n1.0\ta dog\ta car\n")
    code = ("import sys\nfrom mmcompress.data import NAMED_DATA, load_data\n"
            f"print(load_data({str(sts)!r}).task, *sorted(NAMED_DATA))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    words = done.stdout.split()
    assert words[:1] == ["sts"], done.stdout + done.stderr
    assert {"stsb-dev", "stsb-train", "demo-train", "lit-cifar-train"} <= set(words[1:])


def test_a_named_spec_gives_data_named_as_the_spec(monkeypatch):
    """Runs printed 'trimodal-eval' and 'sts-dev', which --data refused: the names reports
    print are the specs that load them."""
    from mmcompress import data as data_module
    from mmcompress.data import Dataset

    monkeypatch.setitem(data_module.NAMED_DATA, "pairs-x",
                        lambda: Dataset("pairs-x-file (two pairs)", "sts", texts=["a", "b"],
                                        texts_b=["c", "d"], scores=[1.0, 2.0]))
    data = load_data("pairs-x")
    assert data.name == "pairs-x (two pairs)" and data.texts == ["a", "b"]


def test_images_turn_by_their_exif_orientation_and_transparency_lies_on_white(tmp_path):
    """A phone photo tagged 'rotate 90°' was read sideways; transparent pixels read black."""
    from mmcompress.data.dataset import load_image

    wide = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    wide.save(tmp_path / "turned.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "turned.jpg").shape == (40, 20, 3)
    clear = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    clear.putpixel((0, 0), (0, 0, 255, 255))
    clear.save(tmp_path / "clear.png")
    arr = load_image(tmp_path / "clear.png")
    assert np.allclose(arr[1, 1], 1.0) and np.allclose(arr[0, 0], [0, 0, 1])


def test_in_memory_rgba_and_grey_alpha_images_keep_their_colour():
    """A 4-channel array became its red channel repeated: opaque blue read as black."""
    from mmcompress.adapters.preprocess import images_to_tensor

    blue = np.zeros((8, 8, 4), np.float32)
    blue[..., 2] = blue[..., 3] = 1.0
    rgb = images_to_tensor([blue], 8, [0, 0, 0], [1, 1, 1])
    assert torch.allclose(rgb[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    grey = images_to_tensor([blue], 8, [0], [1])
    assert torch.allclose(grey[0, 0], torch.full((8, 8), 1 / 3))
    with pytest.raises(DataError, match="1–4 channels"):
        images_to_tensor([np.zeros((8, 8, 5), np.float32)], 8, [0, 0, 0], [1, 1, 1])


def test_sts_sentences_may_hold_unicode_line_separators(tmp_path):
    """Lines were split at U+2028 and NEL too, so such a row was '2 tab-separated fields'."""
    path = tmp_path / "pairs.tsv"
    path.write_text("4.0\ta cat\u2028sits\ta cat sits\r\n1.0\ta dog\x85barks\ta car\n",
                    encoding="utf-8")
    data = load_data(path)
    assert data.scores == [4.0, 1.0] and data.texts == ["a cat\u2028sits", "a dog\x85barks"]
    assert data.texts_b == ["a cat sits", "a car"]


def test_digest_tells_apart_sets_of_one_name_and_size(tmp_path):
    """A training checkpoint identifies its data by this digest: same content, same digest;
    another label, text or rewritten image file, another digest."""
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (4, 4), (i * 100, 0, 0)).save(paths[-1])

    def make() -> Dataset:
        return Dataset(name="x", task="classification", images=list(paths), labels=[0, 1],
                       class_names=["a", "b"], templates=["{}"])

    first = make().digest()
    assert make().digest() == first
    relabelled = make()
    relabelled.labels = [1, 0]
    assert relabelled.digest() != first
    Image.new("RGB", (4, 4), (7, 7, 7)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))  # a new file time, whatever the clock's resolution
    assert make().digest() != first
    texts = Dataset(name="s", task="sts", texts=["a"], texts_b=["b"], scores=[1.0])
    other = Dataset(name="s", task="sts", texts=["a"], texts_b=["c"], scores=[1.0])
    assert texts.digest() != other.digest()


def test_digest_reads_numpy_labels_string_paths_and_item_shapes(tmp_path):
    """Labels that `check` accepts as numpy integers are fingerprinted like Python ones; a
    path given as a string is a file like a `Path`; items cut at other boundaries differ."""
    path = tmp_path / "0.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)

    def images(refs: list, labels: list) -> Dataset:
        return Dataset(name="x", task="classification", images=refs, labels=labels,
                       class_names=["a", "b"], templates=["{}"])

    assert images([path], [np.int64(1)]).digest() == images([path], [1]).digest()
    as_text = images([str(path)], [1]).digest()
    assert as_text == images([path], [1]).digest()
    os.utime(path, ns=(1, 1))
    assert images([str(path)], [1]).digest() != as_text
    pixels = np.zeros((8, 16, 3), np.float32)
    assert (images([pixels], [0]).digest()
            != images([pixels.reshape(16, 8, 3)], [0]).digest())
    wave = np.arange(3000, dtype=np.float32)

    def clips(cuts: list) -> Dataset:
        return Dataset(name="a", task="multimodal", labels=[0, 1], class_names=["a", "b"],
                       audio=cuts)

    assert clips([wave[:1000], wave[1000:]]).digest() != clips([wave[:2000], wave[2000:]]).digest()
