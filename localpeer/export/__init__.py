"""Merge, convert to GGUF, quantize and check parity: `localpeer export RUN_DIR`."""
