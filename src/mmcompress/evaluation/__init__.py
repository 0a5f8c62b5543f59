"""Evaluation: quality metrics, fidelity to the uncompressed model, size, latency, memory."""
