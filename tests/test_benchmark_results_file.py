"""benchmarks.results_file: the one way benchmarks load and store their JSON results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` sits beside `src`

from benchmarks import results_file  # noqa: E402


def test_store_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    results = {"kinds": {"late": {"top1": 0.5, "bits": [4, 8]}}, "command": "python -m x"}
    results_file.store(path, results)
    assert results_file.load(path) == results
    text = path.read_text()
    assert text.endswith("}\n") and text == json.dumps(results, indent=1) + "\n"
    results_file.store(path, [1, 2])  # a list, and a second store replaces the first
    assert results_file.load(path, {"unused": 1}) == [1, 2]


def test_store_writes_what_json_cannot_as_text(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    results_file.store(path, {"out": Path("a/b.json")})
    assert results_file.load(path) == {"out": "a/b.json"}


def test_load_of_missing_file_returns_a_copy_of_the_default(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    assert results_file.load(missing) == {}
    default = {"kinds": {}}
    loaded = results_file.load(missing, default)
    assert loaded == {"kinds": {}}
    loaded["kinds"]["late"] = 1
    assert default == {"kinds": {}}  # a deep copy: the default is not shared
    assert results_file.load(missing, default) == {"kinds": {}}
    first, second = results_file.load(missing), results_file.load(missing)
    first["x"] = 1
    assert second == {}
    assert results_file.load(missing, []) == []


def test_store_creates_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "r.json"
    results_file.store(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this")


def test_failing_serialisation_leaves_the_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    results_file.store(path, {"kept": True})
    before = path.read_text()
    with pytest.raises(RuntimeError, match="no text"):
        results_file.store(path, {"kept": False, "bad": _Unprintable()})
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_failing_write_leaves_the_existing_file(tmp_path: Path, monkeypatch) -> None:
    import mmcompress.io.atomic as atomic

    path = tmp_path / "r.json"
    results_file.store(path, {"kept": True})
    before = path.read_text()

    def fail(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", fail)  # the write fails before the rename
    with pytest.raises(OSError, match="disk gone"):
        results_file.store(path, {"kept": False})
    assert path.read_text() == before


def test_pruning_rows_merge_by_method_and_setting_only_into_the_same_run() -> None:
    from benchmarks.prune_unstructured import _merged

    def row(method: str, loss: float) -> dict:
        return {"method": method, "setting": "0.6", "loss": loss}

    def dense(value: float) -> dict:
        return {"metric": "m", "m": value, "size_bytes": 10}

    old = {"model": "minilm", "dense": dense(0.8), "rows": [row("wanda", 1.0), row("sgpt", 2.0)]}
    new = {"model": "minilm", "dense": dense(0.8 + 1e-6),
           "rows": [row("sgpt", 3.0), row("new", 4.0)]}
    merged = _merged(old, new)
    assert merged["rows"] == [row("wanda", 1.0), row("sgpt", 3.0), row("new", 4.0)]
    assert merged["dense"] == dense(0.8)
    for other in ({"dense": dense(0.7)}, {"model": "clip"}, {"by_source": True}):
        with pytest.raises(SystemExit, match="other settings"):
            _merged(old, {**new, **other})
