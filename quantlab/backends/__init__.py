"""Inference backends beyond ONNX Runtime (TensorRT), imported only when asked for."""
