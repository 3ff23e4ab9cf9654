"""Qwen3-VL serving library: everything the Triton Python-backend model delegates to."""
