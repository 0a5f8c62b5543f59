"""The `mmcompress` command line: a thin layer over the Python API."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import UserError
from .report import to_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress multimodal models and report what it cost.",
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"mmcompress {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Compress multimodal models and report what it cost."""

DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="a named set (demo, cifar10, lit-cifar-eval, stsb-dev, trimodal, ...) or a path "
        "(class folders, COCO caption JSON, STS TSV, tri-modal CSV); model default if omitted",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
MAX_THREADS = 1024  # far beyond any CPU's cores; 30,000 made the OpenMP runtime fail or crash
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch CPU threads")]


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that half-built outputs are removed on the way out."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `UserError` into one `error:` line and exit code 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _terminate_as_interrupt():
                return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, _Terminated)
            typer.echo(f"error: {'terminated' if terminated else 'interrupted'}", err=True)
            raise typer.Exit(143 if terminated else 130) from None
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:  # the reader went away (`| head`): nothing left to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug, not bad input: still one line, unless debugging
            if os.environ.get("MMCOMPRESS_DEBUG"):
                raise
            typer.echo(
                f"error: internal error ({type(exc).__name__}: {exc}); "
                "set MMCOMPRESS_DEBUG=1 for a traceback",
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def _setup(quiet: bool, threads: int | None) -> bool:
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UserError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    return not quiet


def _print_result(result) -> None:
    from .modules.unpack import compact_layers
    from .report import is_scored, is_timed, measurement_line, terminal_table
    from .training.distributed import is_main_process

    if not is_main_process():  # under torchrun one table: rank 0's, of the model it saves
        return
    typer.echo(terminal_table(result.report["before"], result.report["after"]))
    after = result.report["after"]
    typer.echo("\n" + measurement_line(result.report["measurement"], is_timed(after),
                                        is_scored(after)))
    if result.out is not None:
        typer.echo(f"saved to {result.out}")
        compact = compact_layers(result.adapter.model)
        if compact:
            typer.echo(
                f"note: {compact} linear or convolution layers keep compact weights (sparse or "
                "weight-only integer) and rebuild them on every call, so they are smaller, not "
                "faster; "
                f"`mmcompress evaluate {result.out} --unpack` (or mmcompress.load(..., "
                "unpack=True)) runs them as dense layers, at dense memory"
            )


# the demo's recipes (src/mmcompress/recipes/NAME.yaml) and what each does: W8A8 runs the dual
# encoder's text tower in an integer GEMM; the 0.2 M-parameter fusion classifiers are too small
# for any int8 kernel to speed up, so they take weight-only int8
DEMO_RECIPES = {"demo": "int8 weights and activations (SmoothQuant W8A8)",
                "demo-fusion": "int8 RTN"}


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("mmcompress-demo"),
    model: Annotated[str, typer.Option(
        "--model", help="demo (dual encoder), or fusion / fusion-early / fusion-late / "
        "fusion-hybrid (image + text + audio classifiers)")] = "demo",
    overwrite: Annotated[bool, typer.Option(
        help="replace a non-empty --out (an earlier demo output is replaced anyway)")] = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Compress a built-in model with the default recipe; print before/after."""
    from .api import compress, is_output_folder
    from .io.atomic import check_output_dir

    described = {"demo": "the demo dual encoder (digits CNN + pretrained MiniLM)"} | {
        m: f"the {m} classifier (digit images, texts and spoken digits)"
        for m in ("fusion", "fusion-early", "fusion-late", "fusion-hybrid")}
    if model not in described:
        raise UserError(f"demo --model must be one of {', '.join(described)}, got {model!r}")
    progress = _setup(quiet, threads)
    recipes = {name: resources.files("mmcompress").joinpath(f"recipes/{name}.yaml").read_text()
               for name in DEMO_RECIPES}
    name = "demo" if model == "demo" else "demo-fusion"
    # the demo replaces its own outputs: W8A8 on the dual encoder, RTN on any demo model (the
    # dual encoder's recipe before session 30 too), never what a user's run left there
    mine = {"demo": ("demo",), "demo-fusion": tuple(described)}
    overwrite = overwrite or any(is_output_folder(out, recipes[r], mine[r]) for r in recipes)
    check_output_dir(out, overwrite)  # a refused --out is the only line printed
    typer.echo(f"mmcompress demo: {DEMO_RECIPES[name]} on every tower of {described[model]}",
               err=True)
    _print_result(compress(model, recipes[name], out=out, overwrite=overwrite,
                           progress=progress))


@app.command("compress")
@user_errors
def compress_cmd(
    model: Annotated[str, typer.Option("--model", help="demo, minilm, resnet20..56, lit-cifar, "
                                       "fusion-*, random:NAME, or a folder")],
    recipe: Annotated[Path, typer.Option("--recipe", help="recipe YAML file")],
    out: Annotated[Path, typer.Option("--out", help="output folder (written atomically)")],
    data: DataOpt = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Run a recipe on a model and save the compressed model with its report."""
    from .api import compress
    from .recipe import check_recipe_file

    progress = _setup(quiet, threads)
    check_recipe_file(recipe)  # before anything reads it as YAML text
    _print_result(
        compress(model, recipe, out=out, data=data, overwrite=overwrite, progress=progress)
    )


@app.command()
@user_errors
def evaluate(
    spec: Annotated[str, typer.Argument(help="model spec or mmcompress output folder")],
    data: DataOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    max_samples: Annotated[int | None, typer.Option(help="N evenly spaced examples only")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metric keys")] = None,
    compile_towers: Annotated[bool, typer.Option(
        "--compile", help="run the towers through torch.compile (needs a C++ compiler)")] = False,
    unpack: Annotated[bool, typer.Option(
        "--unpack", help="unpack sparse and weight-only quantized layers to dense ones "
        "(dense speed and memory; the size is still the file's)")] = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Evaluate a model: quality, fidelity (output folders), size, latency, memory."""
    from .api import evaluate as run_evaluate
    from .report import LABELS, fmt, is_scored, is_timed, measurement_line

    progress = _setup(quiet, threads)
    config = {"max_samples": max_samples}
    if metrics is not None:
        config["metrics"] = [m.strip() for m in metrics.split(",") if m.strip()]
        if not config["metrics"]:
            raise UserError(f"--metrics {metrics!r} names no metric; give comma-separated keys "
                            "such as zeroshot_top1,size_bytes")
    result = run_evaluate(spec, data, config, progress=progress, compiled=compile_towers,
                          unpack=unpack)
    for note in result.get("notes", []):
        typer.echo(f"note: {note}", err=True)
    if as_json:
        typer.echo(to_json(result))
        return
    for key, value in result["metrics"].items():  # the units the labels name (MB, M, ms)
        typer.echo(f"{LABELS.get(key, key):22s} {fmt(key, value)}")
    typer.echo("\n" + measurement_line(result["measurement"], is_timed(result["metrics"]),
                                        is_scored(result["metrics"])))


@app.command()
@user_errors
def inspect(
    spec: Annotated[str, typer.Argument(help="model spec or mmcompress output folder")],
    layers: Annotated[bool, typer.Option("--layers", help="list every layer")] = False,
    sensitivity: Annotated[bool, typer.Option(
        help="measure the quality drop when each tower and layer alone is quantized")] = False,
    data: DataOpt = None,
    bits: Annotated[int, typer.Option(help="bits for --sensitivity")] = 4,
    group_size: Annotated[int, typer.Option(
        help="group size for --sensitivity; 0 = one scale per output channel")] = 128,
    max_samples: Annotated[int, typer.Option(min=1, help="examples for --sensitivity")] = 64,
    top: Annotated[int, typer.Option(min=1, help="most sensitive layers to list")] = 15,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Towers, layers and parameters of a model; --sensitivity: what quantizing each costs."""
    from .inspect_model import describe
    from .model_specs import load_model

    progress = _setup(quiet, threads)
    adapter = load_model(spec, progress=progress)
    if sensitivity:
        _print_sensitivity(adapter, data, bits, group_size, max_samples, top, as_json, progress)
        return
    info = describe(adapter)
    if as_json:
        typer.echo(to_json(info))
        return
    typer.echo(f"adapter: {info['adapter']}   params: {info['params'] / 1e6:.2f} M")
    for tower, t in info["towers"].items():
        kinds = ", ".join(f"{n}×{k}" for k, n in sorted(t["layers"].items()))
        if not kinds:  # parameters held outside any layer (a logit scale, a class embedding)
            kinds = "parameters outside layers"
        typer.echo(f"  {tower:10s} {_param_count(t['params'])}   {kinds}")
    if layers:  # in the summary's tower order, columns as wide as their longest entry
        order = {tower: i for i, tower in enumerate(info["towers"])}
        rows = sorted(info["layers"], key=lambda layer: order.get(layer["tower"], len(order)))
        name_w = max((len(r["name"]) for r in rows), default=0)
        type_w = max((len(r["type"]) for r in rows), default=0)
        for r in rows:
            typer.echo(f"  {r['tower']:10s} {r['name']:{name_w}s} {r['type']:{type_w}s} "
                       f"{r['shape']}")


def _param_count(n: int) -> str:
    """A tower's parameter count: millions, or the exact count when that would round to 0."""
    return f"{n / 1e6:8.2f} M" if n >= 5_000 else f"{n:8d}  "


def _print_sensitivity(adapter, data, bits, group_size, max_samples, top, as_json,
                       progress) -> None:
    from .data import load_data
    from .evaluation.evaluate import check_data_fits
    from .inspect_model import sensitivity
    from .quantization.grid import QuantGrid

    if not 2 <= bits <= 8:
        raise UserError(f"--bits must be between 2 and 8, got {bits}")
    if group_size < 0:
        raise UserError(f"--group-size must be at least 1, or 0 for per channel, got {group_size}")
    group_size = group_size or None  # 0: per channel
    dataset = load_data(data if data is not None else adapter.default_data)
    check_data_fits(adapter, dataset)
    result = sensitivity(adapter, dataset, QuantGrid(bits, group_size), max_samples,
                         progress=progress)
    if as_json:
        typer.echo(to_json(result))
        return
    from .report import LABELS, fmt

    grid = f"group {group_size}" if group_size else "per channel"
    reference = ", ".join(f"{LABELS.get(k, k)} {fmt(k, v)}"
                          for k, v in result["reference"].items())
    typer.echo(f"RTN int{bits} ({grid}) on {result['examples']} examples; unquantized: "
               f"{reference}")
    typer.echo(f"{'tower':12s} {'fidelity loss':>14s} {'similarity loss':>16s}  quality drop")
    for tower, m in result["towers"].items():
        drops = ", ".join(f"{LABELS.get(k.removesuffix('_drop'), k)} {v:+.4f}"
                          for k, v in m.items() if k.endswith("_drop"))
        typer.echo(f"{tower:12s} {m['fidelity_loss']:14.5f} {m['similarity_loss']:16.5f}  "
                   f"{drops}")
    ranked = sorted(result["layers"].items(), key=lambda kv: -kv[1])[:top]
    typer.echo("\nmost sensitive layers (fidelity loss when quantized alone):")
    for name, loss in ranked:
        typer.echo(f"  {loss:10.5f}  {name}")


def main() -> None:
    """Console entry point. A usage error (an unknown option or command, a missing or badly
    typed one) is one `error:` line with exit code 2, as every other bad input is."""
    try:
        sys.exit(app(standalone_mode=False))
    except _usage_errors() as exc:
        if not exc.format_message():  # no arguments at all: the help was shown
            sys.exit(2)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C while the parser itself reads input
        sys.exit(130)


def _usage_errors() -> tuple[type[Exception], ...]:
    """The parser's usage-error class: recent typer releases carry their own copy of click."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(module).UsageError)
    return tuple(found)


if __name__ == "__main__":
    main()
