"""Shipping a sequence classifier as ONNX: the export and its checks against PyTorch
(:mod:`.export`), the ONNX Runtime session and sample inputs both use (:mod:`.runtime`), and
PyTorch and ONNX Runtime timed side by side (:mod:`.latency`)."""
