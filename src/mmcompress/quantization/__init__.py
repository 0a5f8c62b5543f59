"""Integer grids, bit packing and the quantization methods' shared pieces."""
