"""perceptserve: export and serve HQ-SAM and DatasetDM on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"
