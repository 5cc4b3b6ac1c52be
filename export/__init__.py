"""Exporters: ONNX (FP32/FP16/INT8 QDQ), TensorRT; see edgehaze/cli/export.py."""
