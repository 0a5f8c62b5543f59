"""``python -m benchmarks.run [--quick] [--suite core|quantization] [--models ...] [--threads 2]``.

The ``core`` suite writes ``DIR/quick.json`` (or ``full.json``) and ``docs/benchmarks.md``;
another suite writes ``DIR/SUITE-quick.json`` (or ``SUITE.json``) and
``docs/benchmarks-SUITE.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .configs import CONFIGS, MODELS, SUITES
from .runner import PEERS, Settings, run_benchmark

QUICK_REPEATS, FULL_REPEATS = 5, 30  # timed calls per tower after the warm-up


def _names(text: str, known: dict, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer examples and latency repeats")
    p.add_argument("--suite", default="core", choices=list(SUITES),
                   help="named set of configurations and models")
    p.add_argument("--models", help="comma-separated model names (default: the suite's)")
    p.add_argument("--configs", help="comma-separated configurations (default: the suite's)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers ('' for none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats", type=int, help="timed latency calls per tower (default 5 quick / 30)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probe")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="JSON folder")
    p.add_argument("--docs", type=Path, help="Markdown file (default: from the suite)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    suite = SUITES[args.suite]
    config_names = _names(args.configs or ",".join(suite.configs), CONFIGS, "configuration")
    configs = {n: CONFIGS[n] for n in config_names}
    configs = {"fp32": None, **configs}  # the baseline every ratio refers to
    settings = Settings(
        quick=args.quick,
        threads=args.threads,
        repeats=args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS),
        warmup=2 if args.quick else 3,
        memory=not args.no_memory,
        configs=configs,
        peers=tuple(_names(args.peers, PEERS, "peer")),
        # configurations named on the command line run on every model asked for
        per_model={} if args.configs else suite.per_model,
    )
    cases = [MODELS[n] for n in _names(args.models or ",".join(suite.models), MODELS, "model")]
    stem = ("quick" if args.quick else "full") if args.suite == "core" else (
        f"{args.suite}-quick" if args.quick else args.suite)
    json_path = args.out / f"{stem}.json"
    docs = args.docs or Path("docs/benchmarks.md" if args.suite == "core"
                             else f"docs/benchmarks-{args.suite}.md")
    command = shlex.join(["python", "-m", "benchmarks.run", *argv])
    results = run_benchmark(cases, settings, json_path, docs, command)
    print(f"wrote {json_path} and {docs} in {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()
