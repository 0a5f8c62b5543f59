"""Smoke test of the benchmark runner on a tiny in-process CLIP (writes only under tmp_path)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` sits beside `src`

from benchmarks.configs import CONFIGS, ModelCase  # noqa: E402
from benchmarks.runner import PEERS, Settings, run_benchmark  # noqa: E402
from mmcompress.data import Dataset  # noqa: E402

HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


def _tiny_data(n: int = 12) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        name="tiny",
        task="classification",
        images=[rng.random((32, 32, 3), dtype=np.float32) for _ in range(n)],
        labels=[i % 3 for i in range(n)],
        class_names=["cat", "dog", "bird"],
        templates=["a photo of a {}", "a {}"],
    )


def test_runner_writes_rows_json_and_markdown(tiny_clip, tmp_path: Path) -> None:
    case = ModelCase("tiny-clip", _tiny_data(), load=lambda: tiny_clip, data_note="random")
    missing = ModelCase("not-a-model")  # not registered: skipped with a reason
    settings = Settings(
        threads=1, repeats=2, warmup=1, memory=False,
        configs={"fp32": None, "rtn-int8": CONFIGS["rtn-int8"]},
    )  # fmt: skip
    json_path, md_path = tmp_path / "results" / "smoke.json", tmp_path / "docs" / "bench.md"

    results = run_benchmark([case, missing], settings, json_path, md_path, "python -m x")

    assert json.loads(json_path.read_text()) == results
    model, skipped = results["models"]
    assert "not available" in skipped["skipped"]
    rows = {row["name"]: row for row in model["rows"]}
    assert set(rows) == {"fp32", "rtn-int8", *PEERS}
    assert model["quality_metric"] == "zeroshot_top1"
    expected_ok = {"fp32", "rtn-int8", "torch-dynamic-int8"}
    if HAS_ORT:
        expected_ok |= {"ort-fp32", "ort-dynamic-int8"}
    else:
        assert rows["ort-fp32"]["status"] == "skipped" and rows["ort-fp32"]["reason"]
    assert {n for n, r in rows.items() if r["status"] == "ok"} == expected_ok
    for name in expected_ok:
        row = rows[name]
        assert 0 <= row["quality"]["zeroshot_top1"] <= 1
        assert row["size_bytes"] > 0
        assert set(row["latency_ratio"]) == {"image", "text"}
        assert all(r > 0 for r in row["latency_ratio"].values())
        if name != "fp32":
            assert row["quality"]["fidelity_cosine"] > 0.9
    assert rows["fp32"]["latency_ratio"] == {"image": 1.0, "text": 1.0}
    assert rows["rtn-int8"]["size_ratio"] < 0.6
    assert rows["rtn-int8"]["build_s"] >= 0

    text = md_path.read_text()
    assert "python -m x" in text and "| `rtn-int8` |" in text and "not-a-model" in text
    assert "../results/smoke.json" in text


def test_runner_skips_a_model_that_fails_to_load(tmp_path: Path) -> None:
    def broken():
        raise OSError("weights missing")

    case = ModelCase("broken", "demo", load=broken)
    results = run_benchmark([case], Settings(memory=False), tmp_path / "r.json", None, "cmd")
    assert results["models"][0]["skipped"] == "OSError: weights missing"
    assert (tmp_path / "r.json").is_file()


def test_paired_bootstrap_interval_of_an_sts_loss() -> None:
    from benchmarks.stats import sts_difference_interval

    torch.manual_seed(0)
    reference = {"text": torch.randn(600, 16)}
    a, b = reference["text"][:300], reference["text"][300:]
    gold = (torch.nn.functional.cosine_similarity(a, b) + 0.1 * torch.randn(300)).tolist()
    assert sts_difference_interval(reference, reference, gold, reps=50) == [0.0, 0.0]
    noisy = {"text": reference["text"] + 0.5 * torch.randn(600, 16)}
    lo, hi = sts_difference_interval(reference, noisy, gold, reps=200)
    assert 0 < lo < hi  # the noisy copy ranks the pairs worse on every resample's bulk


def test_sts_loss_by_group_scores_each_group_apart() -> None:
    from benchmarks.stats import sts_loss_by_group

    torch.manual_seed(0)
    reference = {"text": torch.randn(400, 16)}
    a, b = reference["text"][:200], reference["text"][200:]
    gold = torch.nn.functional.cosine_similarity(a, b).tolist()
    groups = ["x", "y"] * 100
    noisy = reference["text"].clone()  # only the pairs of group "y" get noise
    noisy[1:200:2] += torch.randn(100, 16)
    loss = sts_loss_by_group(reference, {"text": noisy}, gold, groups)
    assert list(loss) == ["x", "y"] and loss["x"] == 0.0 and loss["y"] > 0.05
    assert sts_loss_by_group(reference, reference, gold, groups) == {"x": 0.0, "y": 0.0}


def test_zeroshot_interval_pairs_each_image_of_both_models() -> None:
    from benchmarks.stats import zeroshot_correct, zeroshot_difference_interval

    classes = torch.eye(3, 8)  # one prompt per class
    labels = [i % 3 for i in range(30)]
    right = {"image": classes[labels], "text": classes}
    wrong = {"image": classes[[(i + 1) % 3 for i in labels]], "text": classes}
    half = {"image": torch.cat([right["image"][:15], wrong["image"][15:]]), "text": classes}
    assert zeroshot_correct(half, labels, 3).tolist() == [1.0] * 15 + [0.0] * 15
    assert zeroshot_difference_interval(right, wrong, labels, 3, reps=50) == [1.0, 1.0]
    lo, hi = zeroshot_difference_interval(right, half, labels, 3, reps=200)
    assert 0.2 < lo < 0.5 < hi < 0.8  # half the images differ


def test_fusion_gain_intervals_pair_the_same_examples() -> None:
    from types import SimpleNamespace

    from benchmarks.fusion import gain_intervals

    n = 40
    data = Dataset(name="t", task="multimodal", images=[np.zeros((8, 8))] * n,
                   texts=["one"] * (n - 4) + [""] * 4, audio=[np.zeros(16)] * n,
                   labels=[i % 2 for i in range(n)], class_names=["zero", "one"])
    right = torch.nn.functional.one_hot(torch.tensor(data.labels), 2).float()
    wrong = right.flip(1)
    better = SimpleNamespace(embeddings={"logits": right})
    worse = SimpleNamespace(embeddings={"logits": torch.cat([wrong[:10], right[10:]])})
    ci = gain_intervals(better, worse, data)
    assert ci["top1"][0] > 0 and ci["top1_all"][0] > 0  # better on every resample
    assert gain_intervals(better, better, data) == {"top1": [0.0, 0.0], "top1_all": [0.0, 0.0]}


def test_prune_structured_update_keeps_other_sections_and_refuses_other_settings(
        tmp_path: Path, monkeypatch) -> None:
    from benchmarks import prune_structured

    monkeypatch.setattr(prune_structured, "allocation", lambda *a: {"runs": ["new"]})
    out = tmp_path / "ps.json"
    stored = {"threads": prune_structured.THREADS, "batch": prune_structured.BATCH,
              "repeats": 10, "calibration_samples": 64, "clip": {"kept": True},
              "demo": {"runs": ["old"]}}
    out.write_text(json.dumps(stored))
    prune_structured.main([str(out), "--quick", "--update", "--sections", "demo"])
    after = json.loads(out.read_text())
    assert after["clip"] == {"kept": True}
    assert after["demo"]["runs"] == ["new"] and "--update" in after["demo"]["command"]
    with pytest.raises(SystemExit, match="other settings"):
        prune_structured.main([str(out), "--update", "--sections", "demo"])  # 30 repeats
    assert json.loads(out.read_text()) == after


def test_fusion_prune_budget_matches_uniform_size_with_global_ranking(monkeypatch) -> None:
    """The uniform ratio is the smallest whole percent meeting the size target; the budget's
    file is no larger than uniform's, and it spreads its removals unevenly."""
    from benchmarks import fusion
    from benchmarks import fusion_prune_budget as fpb
    from mmcompress.adapters.fusion import FusionAdapter
    from mmcompress.evaluation.evaluate import count_params, saved_size_bytes
    from mmcompress.models.fusion import FusionClassifier

    sys.path.insert(0, str(Path(__file__).parent))
    from test_fusion import TINY, tiny_data

    monkeypatch.setattr(fusion, "CALIBRATION", {"samples": 8, "batch_size": 4, "seed": 0})
    monkeypatch.setattr(fpb, "TARGET", 0.5)
    torch.manual_seed(0)  # four heads and 16 channels, as the built-in models: 95% keeps one
    dense = FusionAdapter(FusionClassifier(fusion="late", **{**TINY, "heads": 4,
                                                             "image_channels": [16, 16]}))
    data = tiny_data()
    fp32 = saved_size_bytes(dense.model)
    f = fpb.uniform_fraction(dense, data, fp32)

    def size(fraction: float):
        model = fusion.compressed(dense, [fpb.uniform_stage(fraction, "magnitude")], data)[0]
        return model, saved_size_bytes(model.model)

    uniform, got = size(f)
    assert f > 0.5 and got <= 0.5 * fp32 < size(f - 0.01)[1]
    ratio = count_params(uniform.model) / count_params(dense.model)
    budget, info = fpb.budgeted(dense, data, ratio, got, fp32)
    assert saved_size_bytes(budget.model) <= got
    removed = info["summary"]["params"]
    assert len({v["removed_ratio"] for v in removed.values()}) > 1


def test_layer_error_benchmark_masks_hit_the_setting_and_rank_by_the_objective() -> None:
    from benchmarks.prune_layer_error import MASKS, relative_error
    from mmcompress.calibration import HessianCollector
    from mmcompress.sparsity.refit import refit_kept

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=gen) @ torch.randn(32, 32, generator=gen)
    stats = HessianCollector()
    stats.add(x)
    w, h = torch.randn(16, 32, generator=gen), stats.hessian
    assert relative_error(w, w, h) == 0 and relative_error(w, 0 * w, h) == pytest.approx(1)
    masked = {}
    for name, mask in MASKS.items():
        keep = mask(w, stats, 0.5, (2, 4))
        assert (keep.view(16, -1, 4).sum(-1) == 2).all(), name
        masked[name] = relative_error(w, w * keep, h)
        assert relative_error(w, refit_kept(w, keep, h) * keep, h) < masked[name], name
    assert masked["wanda"] < masked["wanda-noswap"]  # swaps lower the error of the bare mask


def test_gptq_sparse_benchmark_orders_the_ways_of_quantizing_a_pruned_layer() -> None:
    from benchmarks.gptq_sparse import errors
    from mmcompress.quantization.grid import QuantGrid

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=gen) @ torch.randn(32, 32, generator=gen)
    w = torch.randn(16, 32, generator=gen)
    keep = torch.rand(16, 32, generator=gen) > 0.5
    e = errors(w, 2 * x.T @ x / len(x), keep, QuantGrid(4, 16))
    assert 0 < e["pruned_fp32"] < e["gptq"] < e["gptq-unaware"] and e["gptq"] < e["rtn"]


def test_sts_folds_hold_out_every_pair_once_and_summarise_per_fold(monkeypatch, tmp_path) -> None:
    import benchmarks.sts_heldout as heldout
    from benchmarks.sts_folds import summary

    (tmp_path / "stsb").mkdir()
    lines = [f"g\tf\ty\t{i}\t{i % 5}\ta{i}\tb{i}" for i in range(1, 11)]
    (tmp_path / "stsb" / "sts-train.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(heldout, "DATA_ROOT", tmp_path)
    held = []
    for k in range(4):
        calib, test = heldout.split(tmp_path / str(k), fold=k)
        fold, rest = test.read_text().splitlines(), calib.read_text().splitlines()
        assert not set(fold) & set(rest) and len(fold) + len(rest) == 10
        held += fold
    assert sorted(held) == sorted(lines)
    with pytest.raises(ValueError, match="fold"):
        heldout.split(tmp_path / "x", fold=4)

    def run(losses: dict) -> dict:
        return {"rows": [{"method": m, "setting": s, "loss": v} for (m, s), v in losses.items()]}

    folds = [run({("wanda", "0.6"): 0.01, ("admm", "0.7"): 0.02}),
             run({("wanda", "0.6"): 0.006, ("admm", "0.7"): 0.01, ("x", "0.6"): 0.0})]
    rows = summary(folds)
    assert [(r["method"], r["setting"]) for r in rows] == [("wanda", "0.6"), ("admm", "0.7")]
    assert rows[0]["loss_mean"] == pytest.approx(0.008) and rows[0]["folds_within_limit"] == 1
    assert rows[1]["loss_fold1"] == 0.01 and rows[1]["folds_within_limit"] == 2


def test_prune_rows_carry_their_targets_and_ignores_into_the_stage() -> None:
    from benchmarks.prune_unstructured import _stage

    cfg = _stage("wanda-noswap", "2:4", targets=["re:intermediate"], ignore=["text.x"])
    assert cfg == {"method": "wanda", "embeddings": False, "swaps": 0, "pattern": "2:4",
                   "targets": ["re:intermediate"], "ignore": ["text.x"]}
    assert "targets" not in _stage("wanda", "0.6") and _stage("wanda", "0.6")["sparsity"] == 0.6
    assert "permute" not in cfg and _stage("admm", "2:4", own_order=True)["permute"] is False


def test_pruning_rows_of_the_benchmark_page_read_each_methods_defaults() -> None:
    from benchmarks.pruning_page import _quality_table

    rows = [{"method": m, "setting": s, "loss": loss}
            for m, s, loss in (("wanda", "0.6", 0.01), ("wanda-noswap", "0.6", 0.5),
                               ("sparsegpt-bn", "0.5", -0.002), ("sparsegpt", "0.5", 0.3))]
    folds = {"rows": [{"method": "wanda", "setting": "0.6", "loss_mean": 0.0116}]}
    table = _quality_table({"rows": rows}, folds).splitlines()
    assert table[0] == "| method | 0.5 loss | 0.6 loss | 0.7 loss | 2:4 loss | held-out 0.6 |"
    assert "| wanda | — | +0.0100 | — | — | +0.0116 |" in table  # not the -noswap row
    assert "| sparsegpt | +0.3000 | — | — | — | — |" in table
    corrected = _quality_table({"rows": rows}, None, suffix="-bn").splitlines()
    assert "| sparsegpt | -0.0020 | — | — | — |" in corrected
    assert "| wanda | — | — | — | — |" in corrected


def test_permute_rows_pair_each_methods_own_order_rows_with_its_defaults() -> None:
    from benchmarks.pruning_page import _permute_table

    own = {"rows": [{"method": m, "setting": s, "loss": loss}
                    for m, s, loss in (("wanda", "2:4", 0.012), ("wanda", "0.6", 0.5),
                                       ("wanda-noswap", "2:4", 0.9))]}
    chosen = {"rows": [{"method": "wanda", "setting": "2:4", "loss": 0.011},
                       {"method": "admm", "setting": "2:4", "loss": 0.0053},
                       {"method": "wanda-perm", "setting": "2:4", "loss": 0.7}]}
    table = _permute_table([("dev", own, chosen, "loss"), ("other", own, None, "loss")])
    lines = table.splitlines()
    assert lines[0] == "| method | dev | other |"
    assert "| wanda | +0.0120 → +0.0110 | +0.0120 → — |" in lines
    assert not any(line.startswith("| admm") for line in lines)  # no own-order row


def test_allocation_rows_pair_each_per_tower_run_with_its_global_twin() -> None:
    from benchmarks.pruning_page import _allocation_table

    def run(importance: str, scope: str, top1: float) -> dict:
        return {"importance": importance, "scope": scope, "amounts": {"heads": 0.5},
                "zeroshot_top1": top1, "params": 1_500_000}

    section = {"runs": [run("taylor", "tower", 0.2), run("taylor", "global", 0.8),
                        run("magnitude", "tower", 0.3)]}  # no global twin: left out
    table = _allocation_table(section, "zeroshot_top1").splitlines()
    assert table[2:] == ["| 50% | taylor | 0.2000 | 0.8000 | 1.50 / 1.50 |"]


def test_structured_rows_name_the_share_of_each_kind_of_unit_removed() -> None:
    from benchmarks.pruning_page import _removed

    summary = {"removed": {"text": {"heads": {"removed": 48, "of": 96},
                                    "neurons": {"removed": 6144, "of": 24576}}}}
    assert _removed(summary, "text") == "heads 0.5 + neurons 0.25"


@pytest.mark.parametrize("results, page", [("quick.json", "benchmarks.md"),
                                           ("quantization.json", "benchmarks-quantization.md")])
def test_committed_benchmark_pages_are_what_their_results_render(results, page) -> None:
    """Regenerate with `python -m benchmarks.markdown benchmarks/results/RESULTS docs/PAGE`
    after storing new results."""
    import os

    from benchmarks.markdown import render_markdown

    root = Path(__file__).resolve().parent.parent
    results_file, doc = root / "benchmarks" / "results" / results, root / "docs" / page
    rendered = render_markdown(json.loads(results_file.read_text()),
                               os.path.relpath(results_file, doc.parent))
    assert rendered == doc.read_text()


def test_committed_method_results_and_fusion_pages_are_what_their_results_render() -> None:
    """Regenerate with `python -m benchmarks.method_results` and
    `python -m benchmarks.fusion --render`."""
    from benchmarks import fusion_page, method_results

    root = Path(__file__).resolve().parent.parent
    assert method_results.render() == (root / "docs" / "method-results.md").read_text()
    fusion = json.loads((root / "benchmarks" / "results" / "fusion.json").read_text())
    assert fusion_page.render(fusion) == (root / "docs" / "fusion.md").read_text()


def test_no_larger_returns_the_ratio_it_built_with_or_refuses(monkeypatch):
    """The budget comparison's model is at most the target size and reports the ratio its
    model was built with; when five tries cannot get there it says so instead of comparing
    a larger model."""
    import types

    from benchmarks import fusion

    asked = []

    def build(ratio):
        asked.append(ratio)
        return types.SimpleNamespace(model=ratio), None

    monkeypatch.setattr(fusion, "saved_size_bytes", lambda r: int(1000 * r) + 10)
    _, _, used = fusion.no_larger(200, 1000, 0.2, build)
    assert int(1000 * used) + 10 <= 200 and used == asked[-1]
    monkeypatch.setattr(fusion, "saved_size_bytes", lambda r: 250)
    with pytest.raises(RuntimeError, match="no model of at most 200 bytes"):
        fusion.no_larger(200, 1000, 0.2, build)


def test_prune_unstructured_update_takes_the_dense_size_with_or_without_file_metadata():
    from benchmarks.prune_unstructured import _merged

    def run(size: int, spearman: float, rows: list) -> dict:
        return {"model": "minilm", "threads": 2, "rows": rows,
                "dense": {"metric": "stsb_spearman", "stsb_spearman": spearman,
                          "size_bytes": size}}

    old = run(1000, 0.8, [{"method": "wanda", "setting": "0.6", "loss": 0.1}])
    merged = _merged(old, run(1136, 0.8, [{"method": "wanda", "setting": "0.6", "loss": 0.2}]))
    assert [r["loss"] for r in merged["rows"]] == [0.2]
    with pytest.raises(SystemExit, match="other settings"):  # another model
        _merged(old, run(2000, 0.8, []))
    with pytest.raises(SystemExit, match="other settings"):  # rows of the inputs' own order
        _merged(old, {**run(1000, 0.8, []), "own_order": True})
