"""The public Python API: `compress`, `load`, `evaluate`."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from . import __version__
from .adapters import Adapter
from .adapters.frozen_text import cached_only
from .compiled import compile_towers
from .data import NAMED_DATA, Dataset, load_data
from .data.splits import TRAINING_SPLIT
from .errors import CheckpointError, UserError
from .evaluation.config import put_in_metric_order
from .evaluation.evaluate import (
    Evaluation,
    check_data_fits,
    evaluate_adapter,
    latency_metrics,
    quality,
    time_against_base,
)
from .io.atomic import atomic_folder, check_output_dir
from .io.checkpoint import (
    BUFFERS,
    MANIFEST,
    WEIGHTS,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from .methods import StageContext, keep_original, run_stage
from .methods.base import check_targets
from .model_specs import NAMED_SPECS, load_model
from .modules.unpack import unpack_weights
from .progress import said_already, warn
from .recipe import EvaluateConfig, Recipe, load_recipe, plain_values
from .report import report_markdown, to_json
from .report_html import report_html
from .training.distributed import is_main_process


@dataclass
class CompressResult:
    adapter: Adapter
    report: dict[str, Any]
    out: Path | None


def _spec_name(adapter: Adapter) -> str:
    """The spec the model was loaded from, or what it is when it was built in Python."""
    return adapter.source or f"{adapter.name} (built in Python)"


def compress(
    model: str | Path | Adapter,
    recipe: str | Path | dict | Recipe,
    out: str | Path | None = None,
    data: str | Path | Dataset | None = None,
    overwrite: bool = False,
    progress: bool = True,
    calibration_data: str | Path | Dataset | None = None,
) -> CompressResult:
    """Run a recipe on a model; evaluate before and after; save atomically to `out`.

    Args:
        model: a model spec (``demo``, ``random:NAME``, a folder) or a loaded `Adapter`,
            which is compressed in place (after a failed run it may hold half-applied stages
            and training hooks: load it again). A spec is loaded again at the end to time
            each tower before and after compression in alternation; an `Adapter`'s towers
            are timed before and after the stages, so load in between moves their ratio.
        recipe: a YAML path or text, a mapping, or a `Recipe`.
        out: output folder (written only if everything succeeds).
        data: data spec for evaluation (and calibration); the model's default when None.
        calibration_data: data for calibrated methods instead of `data` (overrides the
            recipe's ``calibration.data``), so that calibration need not see the test split.
            Neither given, a named held-out split as `data` (or the model's default) calibrates
            on its training complement (`_calibration_spec`).
    """
    recipe = load_recipe(recipe)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        check_output_dir(out_path, overwrite,
                         _paths_read(recipe, model, data, calibration_data))
    adapter = load_model(model, progress=progress)
    spec = _spec_name(adapter)
    dataset = load_data(data if data is not None else adapter.default_data)
    check_data_fits(adapter, dataset)
    check_targets(adapter, recipe.stages)
    calib_spec = _calibration_spec(calibration_data, recipe, data, adapter)
    calib_set = (_data_read_early(calib_spec, "calibration data") if calib_spec is not None
                 else dataset)
    stage_sets = _stage_sets(adapter, recipe.stages)
    eval_cfg = recipe.evaluate
    retime = _retimes(model, eval_cfg)  # then latency is timed once, after the stages
    before = evaluate_adapter(adapter, dataset, eval_cfg, memory_spec=_memory_spec(model),
                              progress=progress, timed=not retime)
    train_dir = _train_dir(out_path)
    history = _run_stages(adapter, recipe, dataset, calib_set, before, progress, train_dir,
                          stage_sets)
    adapter.stages_applied = (*adapter.stages_applied, *history)
    try:  # a model that could not be loaded back is never saved
        adapter.check_finite()
    except CheckpointError as exc:
        raise UserError(f"the compressed model is broken, {exc}: the calibration data may "
                        "hold extreme values") from None
    if not is_main_process():
        out_path = train_dir = None  # under torchrun only rank 0 writes
    report: dict[str, Any] = {
        "model": spec,
        "recipe": recipe.to_dict(),
        "stages": history,
        "before": before.metrics,
        "mmcompress_version": __version__,
        **({"data": spec_data} if (spec_data := _data_spec(data)) is not None else {}),
    }
    if out_path is None:
        after = _evaluate_after(model, adapter, dataset, eval_cfg, before, retime)
        report.update(after=after.metrics, measurement=after.measurement)
        return CompressResult(adapter, report, None)
    with atomic_folder(out_path, overwrite) as tmp:
        save_checkpoint(adapter, tmp, adapter.source, list(adapter.stages_applied))
        after = _evaluate_after(model, adapter, dataset, eval_cfg, before, retime,
                                memory_spec=str(tmp), weights_file=tmp / WEIGHTS)
        report.update(after=after.metrics, measurement=after.measurement)
        texts = (recipe.to_yaml(), to_json(report), report_markdown(report), report_html(report))
        for name, text in zip(REPORT_FILES, texts, strict=True):
            (tmp / name).write_text(text)
    if train_dir is not None:
        shutil.rmtree(train_dir, ignore_errors=True)  # the run is complete: nothing to resume
    return CompressResult(adapter, report, out_path)


REPORT_FILES = ("recipe.yaml", "report.json", "report.md", "report.html")


def _retimes(model: str | Path | Adapter, config: EvaluateConfig) -> bool:
    """Whether latency is timed after the stages, each tower in alternation with the model
    before compression loaded again from its spec (`time_against_base`): on the process that
    writes, when latency is asked for, for a model given by its spec. A model given as an
    object is compressed in place: its towers are timed before and after the stages."""
    return not isinstance(model, Adapter) and is_main_process() \
        and any(k.startswith("latency_ms_") for k in config.wanted)


def _evaluate_after(model: str | Path | Adapter, adapter: Adapter, dataset: Dataset,
                    config: EvaluateConfig, before: Evaluation, retime: bool,
                    **kwargs: Any) -> Evaluation:
    """The compressed model's evaluation; with `retime`, its latency and the base's, timed
    together once the rest is measured. A base that cannot be loaded again cheaply (a
    built-in model missing from the cache) or fails to run leaves the compressed model timed
    alone and the base untimed."""
    after = evaluate_adapter(adapter, dataset, config, reference=before.embeddings,
                             timed=not retime, **kwargs)
    if not retime:
        return after
    base = _reload_base(model)
    try:
        if base is not None:
            time_against_base(base, adapter, before.metrics, after, config)
            return after
    except Exception as exc:  # a failed re-timing must not lose the finished run
        warn(f"latency timed after the stages alone: timing it against the model before "
             f"compression failed ({type(exc).__name__}: {exc})")
    after.metrics.update(latency_metrics(adapter, config))
    put_in_metric_order(after.metrics)
    return after


def _reload_base(model: str | Path) -> Adapter | None:
    """The model before compression, loaded again from its spec, or None where that fails or
    would not be cheap: a built-in model is only read from the cache, never trained again.
    The caller's random state is left as it was, and what loading it said the first time is
    not said again."""
    try:
        with cached_only(), said_already(), torch.random.fork_rng(devices=[]):
            return load_model(model, progress=False)
    except Exception:  # out of memory, a folder changed since, not cached: timed alone
        return None


def _data_spec(data: str | Path | Dataset | None) -> str | None:
    """The evaluation data as `evaluate` can load it again (a path made absolute), or None:
    the model's default, or data built in Python."""
    if not isinstance(data, str | Path):  # None (the model's default), a Dataset, or bad
        return None
    path = Path(data)
    return str(path.resolve()) if path.exists() else str(data)


def _output_folder(model: str | Path | Adapter) -> Path | None:
    """`model` as an mmcompress output folder, or None (a spec, a Hugging Face folder)."""
    if isinstance(model, Adapter):
        return None
    try:  # a spec name too long for a path is not a folder either
        return Path(str(model)) if (Path(str(model)) / MANIFEST).is_file() else None
    except OSError:
        return None


def _reported_data(folder: Path | None) -> tuple[str | None, str | None]:
    """(the data an output folder's report was measured on, if it records it and it is still
    there, else None: the model's default; a note on why a report's data is not used)."""
    if folder is None or not (folder / "report.json").exists():
        return None, None
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None, ("this output's report.json cannot be read: evaluated on the model's "
                      "default data")
    data = report.get("data") if isinstance(report, dict) else None
    if not isinstance(data, str):
        return None, None
    if Path(data).is_absolute() and not Path(data).exists():
        return None, (f"{data}, the data of this output's report, is gone: evaluated on the "
                      "model's default data")
    return data, f"evaluated on {data}, the data of this output's report"


def is_output_folder(folder: Path, recipe: str | None = None,
                     models: tuple[str, ...] | None = None) -> bool:
    """Whether `folder` holds an mmcompress output and nothing else (with `recipe`: an output
    of that recipe; with `models`: of one of those model specs): what the demo may replace
    without being told to."""
    try:
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    except OSError:  # unreadable: `check_output_dir` says why
        return False
    if not (MANIFEST in names and names <= {WEIGHTS, BUFFERS, MANIFEST, "tokenizer",
                                            *REPORT_FILES}):
        return False
    if models is not None:
        try:
            base = read_manifest(folder).get("base_model")
        except UserError:
            return False
        if base not in models:
            return False
    if recipe is None:
        return True
    try:
        saved = load_recipe(folder / "recipe.yaml").to_dict(given=True)
    except UserError:
        return False
    return saved == load_recipe(recipe).to_dict(given=True)


def _paths_read(recipe: Recipe, *specs: Any) -> tuple[Path, ...]:
    """The paths a run reads: among `specs` (an adapter's: the spec it was loaded from), the
    recipe's calibration data and its stages' data and teachers; not the built-in names, which
    win over a folder of the same name. The output may not replace one."""
    specs = (*(s.source if isinstance(s, Adapter) else s for s in specs),
             recipe.calibration.data,
             *(getattr(stage.config, key, None) for stage in recipe.stages
               for key in ("data", "teacher")))
    named = {*NAMED_SPECS, *NAMED_DATA, "original"}
    paths = (Path(s).expanduser() for s in specs if isinstance(s, str | Path)
             and not (isinstance(s, str) and (s in named or s.startswith("random:"))))
    return tuple(p for p in paths if p.exists())


def _calibration_spec(given: str | Path | Dataset | None, recipe: Recipe,
                      data: str | Path | Dataset | None, adapter: Adapter
                      ) -> str | Path | Dataset | None:
    """Where calibration draws from: `given`, else the recipe's ``calibration.data``, else the
    training complement of a named held-out evaluation split (``demo`` → ``demo-train``,
    ``stsb-dev`` → ``stsb-train``: `TRAINING_SPLIT`), else (None) the evaluation data."""
    if given is not None:
        return given
    if recipe.calibration.data is not None:
        return recipe.calibration.data
    evaluated = data if data is not None else adapter.default_data
    return TRAINING_SPLIT.get(evaluated) if isinstance(evaluated, str) else None


def _data_read_early(spec: str | Path | Dataset, where: str,
                     adapter: Adapter | None = None) -> Dataset:
    """Data a run will need, read and checked before any work (with `adapter`: also that the
    model can use it); its errors say `where` it came from."""
    try:
        data = load_data(spec)
        if adapter is None:
            data.check()
        else:
            check_data_fits(adapter, data)
        return data
    except UserError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _stage_sets(adapter: Adapter, stages: list) -> dict[int, Dataset]:
    """Each stage's own training data (`data:`), read before any work: a wrong path or kind
    fails now, not after evaluation and the stages before it."""
    return {i: _data_read_early(stage.config.data,
                                f"stage {i} ({stage.kind}: {stage.config.method}) data", adapter)
            for i, stage in enumerate(stages) if getattr(stage.config, "data", None) is not None}


def _file_state(path: Path | None) -> tuple | None:
    """(inode, size, modification time) of a file, to tell whether it was replaced."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)


def _train_dir(out: Path | None) -> Path | None:
    """Where training stages keep resumable checkpoints: beside the output folder, so that
    the same command started again after a crash resumes."""
    return out.parent / f".{out.name}.training" if out is not None else None


def _memory_spec(model: str | Path | Adapter) -> str | None:
    return None if isinstance(model, Adapter) else str(model)


def _run_stages(adapter: Adapter, recipe: Recipe, data: Dataset, calib_set: Dataset, before,
                progress: bool, train_dir: Path | None = None,
                stage_sets: dict[int, Dataset] | None = None) -> list:
    context = StageContext(data=calib_set, calibration=recipe.calibration, progress=progress)
    quick = data.head(recipe.evaluate.max_samples)
    context.extra.update(eval_data=quick, train_dir=train_dir, stage_data=stage_sets or {})
    keep_original(adapter, recipe.stages, context)
    history = []
    for i, stage in enumerate(recipe.stages):
        context.extra["stage"] = i
        start = time.perf_counter()
        summary = run_stage(adapter, stage, context)
        seconds = time.perf_counter() - start
        metrics = quality(adapter, quick, before.embeddings).metrics
        history.append(
            {
                "kind": stage.kind,
                "method": stage.config.method,
                "config": stage.config.model_dump(),
                "seconds": round(seconds, 3),
                "summary": summary,
                "metrics": metrics,
            }
        )
    return history


def load(path: str | Path, compiled: bool = False, unpack: bool = False) -> Adapter:
    """Load an mmcompress output folder; `.model` is the compressed `torch.nn.Module`.
    `compiled`: run its towers through ``torch.compile`` (see `mmcompress.compiled`; each
    tower compiles on its first call, for each new input shape). `unpack`: turn sparse and
    weight-only quantized layers into the dense layers they compute (see
    `mmcompress.modules.unpack`): dense speed and memory from a small file."""
    if not isinstance(path, str | Path):
        raise UserError(f"load takes an output folder's path, not {type(path).__name__}")
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder")
    adapter = load_checkpoint(path)
    adapter.source = str(path.resolve())  # compressed again, it names this folder its base
    if unpack:
        unpack_weights(adapter.model)
    if compiled:
        compile_towers(adapter)
    return adapter


def _evaluate_config(values: dict) -> EvaluateConfig:
    try:
        return EvaluateConfig(**plain_values(values))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(f"evaluate options{' ' + where if where else ''}: {msg}") from None


def evaluate(
    model: str | Path | Adapter,
    data: str | Path | Dataset | None = None,
    config: EvaluateConfig | dict | None = None,
    progress: bool = True,
    compiled: bool = False,
    unpack: bool = False,
) -> dict[str, Any]:
    """Evaluate a model spec, output folder or adapter. For an output folder whose base model
    can be loaded, `fidelity_cosine` compares against that base model. `compiled`: evaluate
    its towers through ``torch.compile`` (latency warm-up calls absorb the compilation).
    `unpack`: evaluate with sparse and weight-only quantized layers unpacked to dense ones
    (an output folder's size is still its file's)."""
    cfg = config if isinstance(config, EvaluateConfig) else _evaluate_config(config or {})
    folder = _output_folder(model)
    notes = []
    weights = folder / WEIGHTS if folder is not None else None
    loaded = _file_state(weights)  # before its report is read: both must be of one output
    if data is None:  # what its report was measured on, not the base model's default
        data, note = _reported_data(folder)
        notes.extend([note] if note else [])
    adapter = load_model(model, progress=progress)
    if unpack:
        unpack_weights(adapter.model)
    if compiled:
        compile_towers(adapter)
    dataset = load_data(data if data is not None else adapter.default_data)
    check_data_fits(adapter, dataset)
    reference = None
    manifest = getattr(adapter, "manifest", None)
    base = (manifest or {}).get("base_model")
    if manifest is not None and base is None:
        notes.append("fidelity not measured: the base model was built in Python, not loaded "
                     "from a spec this command can load again")
    if base is not None:
        try:
            base_adapter = load_model(base, progress=progress)
            reference = quality(base_adapter, dataset.head(cfg.max_samples)).embeddings
            del base_adapter
        except UserError as exc:  # base model not available here: no fidelity
            notes.append(f"fidelity not measured: the base model cannot be loaded ({exc})")
    # an output folder's size is its file's; a Hugging Face folder's file may hold another
    # dtype than the float32 model evaluated: that is sized as mmcompress would save it
    result = evaluate_adapter(
        adapter,
        dataset,
        cfg,
        reference=reference,
        memory_spec=_memory_spec(model),
        weights_file=weights,
        progress=progress,
        unpacked=unpack,
    )
    if _file_state(weights) != loaded:  # size and peak memory read the folder again
        raise UserError(f"{folder} was replaced while it was being evaluated (another run's "
                        "--overwrite?); evaluate it again")
    if compiled:  # latency only: peak memory is measured in a fresh process, eagerly
        result.measurement["compiled"] = True
    if cfg.metrics and not result.metrics:
        raise UserError(f"none of the metrics asked for ({', '.join(cfg.metrics)}) applies to "
                        f"this model on {dataset.name} data"
                        + (f"; {notes[0]}" if notes else ""))
    return {
        "model": _spec_name(adapter),
        "metrics": result.metrics,
        "measurement": result.measurement,
        **({"notes": notes} if notes else {}),
    }
