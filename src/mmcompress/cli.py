"""The `mmcompress` command line: a thin layer over the Python API."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress multimodal models and report what it cost.",
)

DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="'demo' or a path (class folders, "
        "COCO caption JSON, STS TSV); model default if omitted",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch CPU threads")]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `UserError` into one `error:` line and exit code 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
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
    if threads:
        import torch

        torch.set_num_threads(threads)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    return not quiet


def _print_result(result) -> None:
    from .report import terminal_table

    typer.echo(terminal_table(result.report["before"], result.report["after"]))
    m = result.report["measurement"]
    typer.echo(
        f"\ndata: {m['data']} ({m['examples']} examples); latency: median of "
        f"{m['latency_repeats']}, batch {m['latency_batch_size']}, {m['threads']} threads"
    )
    if result.out is not None:
        typer.echo(f"saved to {result.out}")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("mmcompress-demo"),
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Compress the built-in demo model with the default recipe; print before/after."""
    from .api import compress

    progress = _setup(quiet, threads)
    recipe = resources.files("mmcompress").joinpath("recipes/demo.yaml").read_text()
    overwrite = (out / "mmcompress.json").is_file()  # rerunning the demo replaces its own output
    typer.echo(
        "mmcompress demo: int8 RTN on every tower of the demo dual encoder "
        "(digits CNN + pretrained MiniLM)",
        err=True,
    )
    _print_result(compress("demo", recipe, out=out, overwrite=overwrite, progress=progress))


@app.command("compress")
@user_errors
def compress_cmd(
    model: Annotated[str, typer.Option("--model", help="demo, random:NAME, or a folder")],
    recipe: Annotated[Path, typer.Option("--recipe", help="recipe YAML file")],
    out: Annotated[Path, typer.Option("--out", help="output folder (written atomically)")],
    data: DataOpt = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Run a recipe on a model and save the compressed model with its report."""
    from .api import compress

    progress = _setup(quiet, threads)
    if not recipe.is_file():
        raise UserError(f"recipe file {recipe} not found")
    _print_result(
        compress(model, recipe, out=out, data=data, overwrite=overwrite, progress=progress)
    )


@app.command()
@user_errors
def evaluate(
    spec: Annotated[str, typer.Argument(help="model spec or mmcompress output folder")],
    data: DataOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    max_samples: Annotated[int | None, typer.Option(help="first N examples only")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metric keys")] = None,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Evaluate a model: quality, fidelity (output folders), size, latency, memory."""
    from .api import evaluate as run_evaluate
    from .report import fmt

    progress = _setup(quiet, threads)
    config = {"max_samples": max_samples}
    if metrics:
        config["metrics"] = [m.strip() for m in metrics.split(",") if m.strip()]
    result = run_evaluate(spec, data, config, progress=progress)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    for key, value in result["metrics"].items():
        typer.echo(f"{key:18s} {fmt(key, value)}")


@app.command()
@user_errors
def inspect(
    spec: Annotated[str, typer.Argument(help="model spec or mmcompress output folder")],
    layers: Annotated[bool, typer.Option("--layers", help="list every layer")] = False,
    sensitivity: Annotated[bool, typer.Option(help="measure per-tower sensitivity")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Towers, layers and parameter counts of a model."""
    from .inspect_model import describe
    from .model_specs import load_model

    if sensitivity:
        raise UserError("--sensitivity is not implemented yet (planned with GPTQ/AWQ, issue 4)")
    info = describe(load_model(spec, progress=False))
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    typer.echo(f"adapter: {info['adapter']}   params: {info['params'] / 1e6:.2f} M")
    for tower, t in info["towers"].items():
        kinds = ", ".join(f"{n}×{k}" for k, n in sorted(t["layers"].items()))
        typer.echo(f"  {tower:10s} {t['params'] / 1e6:8.2f} M   {kinds}")
    if layers:
        for layer in info["layers"]:
            typer.echo(
                f"  {layer['tower']:10s} {layer['name']:60s} {layer['type']:16s} {layer['shape']}"
            )


def main() -> None:
    """Console entry point."""
    sys.exit(app())
