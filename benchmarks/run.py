"""``python -m benchmarks.run [--quick] [--models demo,minilm,...] [--threads 2] [--out DIR]``.

Writes ``DIR/quick.json`` (or ``full.json``) and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .configs import CONFIGS, MODELS
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
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configurations")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers ('' for none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats", type=int, help="timed latency calls per tower (default 5 quick / 30)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probe")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="JSON folder")
    p.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"), help="Markdown file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configs = {n: CONFIGS[n] for n in _names(args.configs, CONFIGS, "configuration")}
    configs = {"fp32": None, **configs}  # the baseline every ratio refers to
    settings = Settings(
        quick=args.quick,
        threads=args.threads,
        repeats=args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS),
        warmup=2 if args.quick else 3,
        memory=not args.no_memory,
        configs=configs,
        peers=tuple(_names(args.peers, PEERS, "peer")),
    )
    cases = [MODELS[n] for n in _names(args.models, MODELS, "model")]
    json_path = args.out / ("quick.json" if args.quick else "full.json")
    command = shlex.join(["python", "-m", "benchmarks.run", *argv])
    results = run_benchmark(cases, settings, json_path, args.docs, command)
    print(f"wrote {json_path} and {args.docs} in {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()
