"""PyTorch -> ONNX -> TensorRT, with parity checks against the reference models."""
