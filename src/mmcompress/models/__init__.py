"""Model architectures built into mmcompress."""
