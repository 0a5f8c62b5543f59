"""Benchmarks: mmcompress recipes against PyTorch and ONNX Runtime peers, same models and data.

Run ``python -m benchmarks.run --quick``; see ``docs/benchmarks.md`` for the latest results.
"""
