"""Saving and loading: atomic output folders, safetensors weights, a JSON manifest."""
