"""The command line: results on tiny local models, and one-line errors with exit code 2."""

import json
import os
import re

import numpy as np
import pytest
import yaml
from _helpers import FAST_EVAL, toy_image_data
from typer.testing import CliRunner

from mmcompress.cli import app

runner = CliRunner()


def _recipe(tmp_path, stages=None, evaluate=FAST_EVAL):
    stages = stages or [{"quantize": {"method": "rtn", "bits": 4, "group_size": 16}}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"stages": stages, "evaluate": evaluate}))
    return path


def _assert_user_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_compress_writes_the_output_folder(tiny_clip_folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                 str(_recipe(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "buffers.safetensors",
                                                "mmcompress.json", "recipe.yaml", "report.json",
                                                "report.md", "report.html"}
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"model", "recipe", "stages", "before", "after"}
    assert report["after"]["size_bytes"] < 0.5 * report["before"]["size_bytes"]
    assert report["after"]["size_bytes"] == (out / "model.safetensors").stat().st_size
    assert 0 <= report["after"]["zeroshot_top1"] <= 1
    assert "fidelity" in result.output
    assert "rebuild them on every call" in result.output and "--unpack" in result.output


def test_no_unpack_note_when_every_layer_is_dense(tiny_clip_folder, tmp_path):
    recipe = _recipe(tmp_path, [{"prune": {"method": "structured", "neurons": 0.5}}])
    result = runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                 str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "saved to" in result.output and "--unpack" not in result.output
    for report in ("report.md", "report.html"):  # what the stage did, and how it was measured
        text = (tmp_path / "out" / report).read_text()
        assert re.search(r"parameters ×0\.\d+, calibrated on \d+ images and \d+ texts "
                         r"\([\d,]+ tokens\)", text), report
        assert "Latency: median" in text, report
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<code>model.safetensors</code>" in html and "`" not in html


def test_evaluate_output_folder_as_json(tiny_clip_folder, tmp_path):
    out = tmp_path / "out"
    runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                        str(_recipe(tmp_path)), "--out", str(out)])
    result = runner.invoke(app, ["evaluate", str(out), "--json", "--max-samples", "16",
                                 "--metrics", "zeroshot_top1,fidelity_cosine,size_bytes"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)["metrics"]
    assert metrics["fidelity_cosine"] > 0.5  # compared against the base model folder
    unpacked = runner.invoke(app, ["evaluate", str(out), "--json", "--max-samples", "16",
                                   "--unpack", "--metrics", "zeroshot_top1,size_bytes"])
    assert unpacked.exit_code == 0, unpacked.output
    report = json.loads(unpacked.output)
    assert report["measurement"]["unpacked"] is True
    assert report["metrics"]["size_bytes"] == metrics["size_bytes"]  # still the file's
    assert abs(report["metrics"]["zeroshot_top1"] - metrics["zeroshot_top1"]) <= 1 / 16
    tiny_clip_folder.rename(tmp_path / "moved")  # the base model is no longer where it was
    result = runner.invoke(app, ["evaluate", str(out), "--json", "--max-samples", "16",
                                 "--metrics", "zeroshot_top1,fidelity_cosine"])
    assert result.exit_code == 0, result.output
    assert "note: fidelity not measured: the base model cannot be loaded" in result.stderr
    assert "fidelity_cosine" not in json.loads(result.stdout)["metrics"]


def test_inspect_lists_towers(tiny_clip_folder):
    result = runner.invoke(app, ["inspect", str(tiny_clip_folder), "--layers"])
    assert result.exit_code == 0, result.output
    assert "vision" in result.output and "text_model.encoder.layers.0.mlp.fc1" in result.output
    rows = [line for line in result.output.splitlines() if line.endswith("]")]  # layer rows
    towers = [row.split()[0] for row in rows]
    assert towers == sorted(towers, key=["vision", "text", "projector", "other"].index)
    assert len({row.index("[") for row in rows}) == 1  # shapes line up whatever the types


def test_inspect_counts_a_logit_scale_exactly():
    from mmcompress.cli import _param_count

    assert _param_count(1).split() == ["1"]
    assert _param_count(22_950_000).split() == ["22.95", "M"]


def test_inspect_takes_threads(tiny_clip_folder):
    import torch

    before = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["inspect", str(tiny_clip_folder), "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "100000"):  # 100,000 crashed the OpenMP runtime
        result = runner.invoke(app, ["inspect", str(tiny_clip_folder), "--threads", bad])
        assert result.exit_code == 2 and "--threads must be between 1 and 1024" in result.output


def test_inspect_tower_params_add_up_to_the_total(tiny_clip):
    """Parameters a module holds beside its children (CLIP's class embedding, a fusion
    model's position table) were left out of their tower's count."""
    from mmcompress.inspect_model import describe

    info = describe(tiny_clip)
    assert sum(t["params"] for t in info["towers"].values()) == info["params"]
    vision = sum(p.numel() for n, p in tiny_clip.model.named_parameters()
                 if n.startswith("vision_model."))
    assert info["towers"]["vision"]["params"] == vision


@pytest.mark.parametrize("case", ["bad_yaml", "unknown_key", "unknown_method", "bits0",
                                  "bad_group", "missing_model", "missing_data", "wrong_data",
                                  "missing_recipe", "not_a_model", "out_under_a_file",
                                  "threads0"])
def test_user_errors_are_one_line_exit_2_and_leave_no_output(tiny_clip_folder, tmp_path, case):
    recipe = _recipe(tmp_path)
    model, data = str(tiny_clip_folder), None
    fragment = {"bad_yaml": "not valid YAML", "unknown_key": "unknown key 'bitz'",
                "unknown_method": "unknown quantize method", "bits0": "bits",
                "bad_group": "group_size", "missing_model": "not found",
                "missing_data": "does not exist", "wrong_data": "unrecognised data",
                "missing_recipe": "not found", "not_a_model": "neither",
                "out_under_a_file": "is a file, not a folder",
                "threads0": "--threads must be between 1 and"}[case]
    out, extra = tmp_path / "out", []
    if case == "bad_yaml":
        recipe.write_text("stages: [\n")
    elif case == "unknown_key":
        recipe = _recipe(tmp_path, [{"quantize": {"method": "rtn", "bitz": 4}}])
    elif case == "unknown_method":
        recipe = _recipe(tmp_path, [{"quantize": {"method": "magic"}}])
    elif case == "bits0":
        recipe = _recipe(tmp_path, [{"quantize": {"method": "rtn", "bits": 0}}])
    elif case == "bad_group":
        recipe = _recipe(tmp_path, [{"quantize": {"method": "rtn", "bits": 4, "group_size": 0}}])
    elif case == "missing_model":
        model = str(tmp_path / "no-such-model")
    elif case == "missing_data":
        data = str(tmp_path / "no-such-data")
    elif case == "wrong_data":
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "notes.txt").write_text("hello")
        data = str(tmp_path / "junk")
    elif case == "missing_recipe":
        recipe = tmp_path / "nope.yaml"
    elif case == "not_a_model":
        model = str(tmp_path)
    elif case == "out_under_a_file":  # refused before any work, not after it
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif case == "threads0":
        extra = ["--threads", "0"]
    args = ["compress", "--model", model, "--recipe", str(recipe), "--out", str(out), *extra]
    result = runner.invoke(app, args + (["--data", data] if data else []))
    _assert_user_error(result, fragment)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_evaluate_says_what_it_measured_on(tiny_clip_folder):
    result = runner.invoke(app, ["evaluate", str(tiny_clip_folder), "--max-samples", "8",
                                 "--metrics", "zeroshot_top1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "(classification, 8 examples), 1 thread" in result.stdout


def test_without_latency_nothing_says_how_latency_was_timed(tiny_clip_folder, tmp_path):
    """A run that times nothing said 'latency: median after ...' in the terminal and report."""
    evaluate = {"max_samples": 8, "metrics": ["size_bytes", "zeroshot_top1"]}
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                 str(_recipe(tmp_path, evaluate=evaluate)), "--out", str(out),
                                 "--threads", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "examples), 1 thread\n" in result.stdout and "latency:" not in result.stdout
    note = (out / "report.md").read_text().split("## Measurement")[1]
    assert note.lstrip().startswith("Measured with 1 thread.") and "Latency" not in note
    timed = runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                str(_recipe(tmp_path)), "--out", str(tmp_path / "timed"), "-q"])
    assert "; latency: median" in timed.stdout
    assert "Latency: median" in (tmp_path / "timed" / "report.md").read_text()


def test_corrupted_checkpoint_is_an_error(tiny_clip_folder, tmp_path):
    out = tmp_path / "out"
    runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                        str(_recipe(tmp_path)), "--out", str(out)])
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = runner.invoke(app, ["evaluate", str(out), "--metrics", "params"])
    _assert_user_error(result, "truncated or altered")


def test_nan_model_is_an_error(tiny_clip_folder, tmp_path):
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_folder)
    with torch.no_grad():
        model.text_projection.weight[0, 0] = float("inf")
    model.save_pretrained(tiny_clip_folder)
    result = runner.invoke(app, ["evaluate", str(tiny_clip_folder), "--metrics", "params"])
    _assert_user_error(result, "NaN or Inf")


def test_unknown_metric_is_an_error(tiny_clip_folder):
    result = runner.invoke(app, ["evaluate", str(tiny_clip_folder), "--metrics", "speed"])
    _assert_user_error(result, "evaluate options: unknown metric")  # no pydantic prefix


def test_a_recipe_folder_is_named_as_a_folder(tmp_path):
    result = runner.invoke(app, ["compress", "--model", "demo", "--recipe", str(tmp_path),
                                 "--out", str(tmp_path / "out")])
    _assert_user_error(result, "is a folder, not a file")


def test_existing_output_is_not_replaced_without_overwrite(tiny_clip_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                 str(_recipe(tmp_path)), "--out", str(out)])
    _assert_user_error(result, "not empty")
    assert (out / "keep.txt").read_text() == "mine"


def test_demo_refusing_its_output_folder_prints_only_the_error(tmp_path):
    """The refusal comes before the demo's header line: one `error:` line in all."""
    (tmp_path / "keep.txt").write_text("mine")
    _assert_user_error(runner.invoke(app, ["demo", "--out", str(tmp_path)]), "not empty")


def test_json_output_is_strict_json():
    """A metric that could not be computed (NaN) is written as null, never as a bare NaN."""
    from mmcompress.report import to_json

    text = to_json({"metrics": {"stsb_spearman": float("nan"), "size_bytes": 10}})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "metrics": {"stsb_spearman": None, "size_bytes": 10}}


def test_missing_calibration_data_is_named_before_the_evaluation_runs(tiny_clip, tmp_path,
                                                                      monkeypatch):
    """It was loaded after the evaluation before the stages (28 s of MiniLM), and the error
    did not say the path came from calibration.data."""
    import mmcompress
    import mmcompress.api as api
    from mmcompress.errors import DataError

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before reading the calibration data")

    monkeypatch.setattr(api, "evaluate_adapter", no_evaluation)
    recipe = {"stages": [{"quantize": {"method": "rtn"}}],
              "calibration": {"data": str(tmp_path / "nowhere")}}
    with pytest.raises(DataError, match="^calibration data: .*nowhere"):
        mmcompress.compress(tiny_clip, recipe, data=toy_image_data(), progress=False)
    uneven = toy_image_data()
    uneven.labels = uneven.labels[:2]  # a set made in Python is checked like the run's data
    with pytest.raises(DataError, match="^calibration data: .*columns differ in length"):
        mmcompress.compress(tiny_clip, {"stages": [{"quantize": {"method": "rtn"}}]},
                            data=toy_image_data(), calibration_data=uneven, progress=False)


def test_python_arguments_of_the_wrong_type_are_one_line_user_errors(tiny_clip):
    import torch

    import mmcompress
    from mmcompress.errors import DataError, UserError

    recipe = {"stages": [{"quantize": {"method": "rtn"}}]}
    with pytest.raises(UserError, match="^load takes an output folder's path, not NoneType$"):
        mmcompress.load(None)
    with pytest.raises(UserError, match=r"^the model must be a name, a path or an Adapter, not "
                                        r"Linear Linear\(in_features=3"):
        mmcompress.compress(torch.nn.Linear(3, 3), recipe, progress=False)
    with pytest.raises(DataError, match="^the data must be a name, a path or a Dataset, not "
                                        "int 5$"):
        mmcompress.compress(tiny_clip, recipe, data=5, progress=False)
    with pytest.raises(DataError, match="^the data must be .* not list"):
        mmcompress.evaluate(tiny_clip, data=[1, 2])
    with pytest.raises(DataError, match="^the data is empty: give a name or a path$"):
        mmcompress.evaluate(tiny_clip, data=" ")
    result = CliRunner().invoke(app, ["inspect", ""])
    assert result.exit_code == 2 and result.output.strip() == \
        "error: the model is empty: give a name or a path"


def test_a_stages_training_data_is_read_before_the_evaluation_runs(tiny_clip, tmp_path,
                                                                   monkeypatch):
    """A finetune stage's `data:` was first read when the stage ran, after the evaluation and
    every stage before it."""
    import mmcompress
    import mmcompress.api as api
    from mmcompress.errors import DataError

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before reading the stage's data")

    monkeypatch.setattr(api, "evaluate_adapter", no_evaluation)
    sts = tmp_path / "pairs.tsv"
    sts.write_text("4.0\ta cat sits\ta cat is sitting\n1.0\ta dog\ta car\n")
    for spec, fragment in [(tmp_path / "nowhere", "does not exist"), (sts, "sts set")]:
        recipe = {"stages": [{"quantize": {"method": "rtn"}},
                             {"finetune": {"method": "task", "data": str(spec)}}]}
        with pytest.raises(DataError, match=f"^stage 1 \\(finetune: task\\) data: .*{fragment}"):
            mmcompress.compress(tiny_clip, recipe, data=toy_image_data(), progress=False)


@pytest.mark.parametrize("argv,fragment", [
    (["evaluate", "demo", "--threads", "abc"], "Invalid value for '--threads'"),
    (["compress", "--model", "demo"], "Missing option '--recipe'"),
    (["--foo"], "No such option: --foo"),
    (["squash"], "No such command 'squash'"),
])
def test_usage_errors_are_one_error_line_and_exit_2(monkeypatch, capsys, argv, fragment):
    """The parser drew a six-line box for these."""
    import sys

    from mmcompress.cli import main

    monkeypatch.setattr(sys, "argv", ["mmcompress", *argv])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


def test_no_arguments_show_the_help_and_no_error_line(monkeypatch, capsys):
    import sys

    from mmcompress.cli import main

    monkeypatch.setattr(sys, "argv", ["mmcompress"])
    with pytest.raises(SystemExit) as stopped:
        main()
    out = capsys.readouterr()
    assert stopped.value.code == 2 and "Usage" in out.out and "error" not in out.err


def test_version_prints_the_package_version():
    from mmcompress import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mmcompress {__version__}"


def test_metrics_none_of_which_apply_are_an_error_not_an_empty_table(tiny_clip_folder):
    """`--metrics stsb_spearman` on an image-text model printed nothing and exited 0."""
    result = runner.invoke(app, ["evaluate", str(tiny_clip_folder), "--metrics",
                                 "stsb_spearman,latency_ms_audio", "--max-samples", "4"])
    assert result.exit_code == 2, result.output
    assert "none of the metrics asked for (stsb_spearman, latency_ms_audio) applies" in \
        result.output
    result = runner.invoke(app, ["evaluate", str(tiny_clip_folder), "--metrics", ",,"])
    assert result.exit_code == 2 and "--metrics ',,' names no metric" in result.output


def test_help_and_usage_errors_do_not_import_torch():
    """`--help` and usage errors answer at once: the package imports the API lazily."""
    import subprocess
    import sys

    code = ("import sys\nfrom mmcompress.cli import main\nsys.argv = ['mmcompress', 'compres']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert "No such command 'compres'" in done.stderr


def test_a_named_held_out_split_calibrates_on_its_training_complement(tiny_clip):
    """`--model minilm --recipe sparse50-int8.yaml` calibrated on STS-B dev, the split it was
    then scored on; the report did not say which data calibration drew from."""
    from mmcompress.api import _calibration_spec
    from mmcompress.recipe import load_recipe
    from mmcompress.report import stage_details

    plain = load_recipe({"stages": [{"quantize": {"method": "gptq"}}]})
    named = load_recipe({"stages": [{"quantize": {"method": "gptq"}}],
                         "calibration": {"data": "mine"}})
    assert _calibration_spec(None, plain, None, tiny_clip) == "demo-train"  # default: demo
    assert _calibration_spec(None, plain, "stsb-dev", tiny_clip) == "stsb-train"
    assert _calibration_spec(None, plain, "my/folder", tiny_clip) is None  # the run's data
    assert _calibration_spec(None, named, "stsb-dev", tiny_clip) == "mine"
    assert _calibration_spec("given", named, "stsb-dev", tiny_clip) == "given"
    summary = {"modules": 3, "calibration": {"text": {"examples": 8, "tokens": 40}},
               "calibration_data": "stsb-train"}
    assert "calibrated on 8 texts (40 tokens) of stsb-train" in stage_details(summary)


def _pets(folder):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                folder / name / f"{i}.png")
    return folder


def test_evaluate_an_output_on_the_data_its_report_was_measured_on(tiny_clip_folder, tmp_path):
    """Without --data, an output was evaluated on its base model's default data, not on the
    data of its report (for a CIFAR ResNet: data its distillation had trained on)."""
    out, pets = tmp_path / "out", _pets(tmp_path / "pets")
    result = runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                 str(_recipe(tmp_path)), "--data", str(pets), "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(out), "--metrics", "zeroshot_top1"])
    assert result.exit_code == 0, result.output
    assert f"note: evaluated on {pets.resolve()}, the data of this output's report" in \
        result.stderr
    assert "(classification, 6 examples)" in result.stdout
    pets.rename(tmp_path / "moved")  # the data is gone: the model's default, no error
    result = runner.invoke(app, ["evaluate", str(out), "--metrics", "params"])
    assert result.exit_code == 0, result.output
    assert f"evaluated on {pets.resolve()}" not in result.stderr
    assert f"note: {pets.resolve()}, the data of this output's report, is gone: evaluated on the " \
        "model's default data" in result.stderr
    (out / "report.json").write_text("{broken")
    result = runner.invoke(app, ["evaluate", str(out), "--metrics", "params"])
    assert result.exit_code == 0, result.output
    assert "note: this output's report.json cannot be read: evaluated on the model's default " \
        "data" in result.stderr


def test_inspect_sensitivity_probes_a_per_channel_grid(tiny_clip_folder, tmp_path):
    """`--group-size` could not ask for one scale per output channel."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "pets" / name / f"{i}.png")
    args = ["inspect", str(tiny_clip_folder), "--sensitivity", "--data", str(tmp_path / "pets"),
            "--max-samples", "4", "--bits", "4", "--group-size"]
    result = runner.invoke(app, [*args, "0"])
    assert result.exit_code == 0, result.output
    assert "RTN int4 (per channel) on 4 examples; unquantized: zero-shot top-1" in result.output
    assert "{" not in result.output and "_drop" not in result.output  # labels, not reprs
    assert "similarity loss" in result.output
    _assert_user_error(runner.invoke(app, [*args, "-1"]), "--group-size must be at least 1")


def test_sensitivity_of_a_model_with_nothing_left_to_quantize_says_so(tiny_clip):
    """An already-quantized output printed an empty ranking without a word."""
    from _helpers import toy_image_data

    from mmcompress.errors import UserError
    from mmcompress.inspect_model import sensitivity
    from mmcompress.methods import METHODS, StageContext
    from mmcompress.quantization.grid import QuantGrid
    from mmcompress.recipe import load_recipe

    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 8}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(tiny_clip, stage.config, StageContext(progress=False))
    with pytest.raises(UserError, match="no plain linear or convolution layer left to probe"):
        sensitivity(tiny_clip, toy_image_data(), QuantGrid(bits=4), 4,
                    progress=False)


def test_an_output_replaced_while_it_is_evaluated_is_an_error(tiny_clip_folder, tmp_path,
                                                              monkeypatch):
    """The size and peak memory of an output folder read it again after loading: replaced
    meanwhile (another run's --overwrite), the figures mixed two models."""
    import shutil

    from mmcompress import api
    from mmcompress.errors import UserError

    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                 str(_recipe(tmp_path)), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    real = api.evaluate_adapter

    def replaced_meanwhile(*args, **kw):
        copy = out / "copy.safetensors"
        shutil.copyfile(out / "model.safetensors", copy)
        os.replace(copy, out / "model.safetensors")  # same bytes, another file
        return real(*args, **kw)

    monkeypatch.setattr(api, "evaluate_adapter", replaced_meanwhile)
    with pytest.raises(UserError, match="was replaced while it was being evaluated"):
        api.evaluate(str(out), config={"max_samples": 4, "metrics": ["size_bytes"]},
                     progress=False)


def test_recipe_errors_do_not_import_transformers():
    """A bad recipe was reported after ~7 s, most of it importing transformers' model code
    (BERT, CLIP, SigLIP) at import time; it is now imported where a model is built."""
    import subprocess
    import sys

    code = ("import sys\nimport mmcompress.api, mmcompress.recipe\n"
            "print(sorted(m for m in sys.modules if m.startswith('transformers')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("earlier,model", [("demo-fusion", "fusion"), ("demo", "demo")])
def test_the_demo_replaces_an_earlier_output_of_either_demo_recipe(tiny_clip, tmp_path,
                                                                   monkeypatch, earlier, model):
    """The dual encoder's demo (W8A8) and the fusion demos (RTN) have their own recipes; each
    replaces what the other left in the default folder, and says which it runs."""
    from importlib import resources

    import mmcompress.api
    from mmcompress.errors import UserError
    from mmcompress.io.checkpoint import save_checkpoint

    out = tmp_path / "out"
    out.mkdir()
    save_checkpoint(tiny_clip, out, model, [])
    recipe = resources.files("mmcompress").joinpath(f"recipes/{earlier}.yaml").read_text()
    (out / "recipe.yaml").write_text(recipe)
    ran = []

    def fake_compress(spec, recipe, **kw):
        ran.append((spec, yaml.safe_load(recipe)["stages"][0]["quantize"]["method"]))
        raise UserError("stop here")

    monkeypatch.setattr(mmcompress.api, "compress", fake_compress)
    for demo_model, method, said in (("demo", "smoothquant", "SmoothQuant W8A8"),
                                     ("fusion-early", "rtn", "int8 RTN")):
        result = runner.invoke(app, ["demo", "--model", demo_model, "--out", str(out)])
        assert result.exit_code == 2 and "stop here" in result.output, result.output
        assert ran[-1] == (demo_model, method) and said in result.output
    (out / "recipe.yaml").write_text("stages:\n  - quantize: {method: rtn, bits: 4}\n")
    _assert_user_error(runner.invoke(app, ["demo", "--out", str(out)]), "not empty")


def test_the_demo_keeps_a_users_w8a8_run_on_a_fusion_model(tiny_clip, tmp_path):
    """The W8A8 demo recipe on a fusion model is a user's run, never a demo output: replacing
    it needs --overwrite."""
    from importlib import resources

    from mmcompress.io.checkpoint import save_checkpoint

    out = tmp_path / "out"
    out.mkdir()
    save_checkpoint(tiny_clip, out, "fusion", [])
    (out / "recipe.yaml").write_text(
        resources.files("mmcompress").joinpath("recipes/demo.yaml").read_text())
    _assert_user_error(runner.invoke(app, ["demo", "--model", "fusion", "--out", str(out)]),
                       "not empty")


def test_a_latency_only_evaluation_does_not_name_examples_it_never_read(tiny_clip_folder):
    result = runner.invoke(app, ["evaluate", str(tiny_clip_folder), "--metrics",
                                 "latency_ms_image", "--max-samples", "4"])
    assert result.exit_code == 0, result.output
    assert re.search(r"measured with \d+ threads?; latency:", result.output), result.output
    assert "examples" not in result.output
    result = runner.invoke(app, ["evaluate", str(tiny_clip_folder), "--metrics",
                                 "zeroshot_top1", "--max-samples", "4"])
    assert "(classification, 4 examples)" in result.output, result.output


def test_a_cost_only_compression_does_not_name_examples_it_never_read(tiny_clip_folder,
                                                                     tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - quantize: {method: rtn, bits: 8}\n"
                      "evaluate: {metrics: [size_bytes, params]}\n")
    result = runner.invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                 str(recipe), "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert re.search(r"measured with \d+ threads?\n", result.output), result.output
