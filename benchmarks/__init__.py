"""Benchmarks: eager vs ONNX Runtime vs served, side by side."""
