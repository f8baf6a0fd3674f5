"""Facial-emotion recognition service: OpenCV face detection + an ONNX emotion classifier behind FastAPI."""

__version__ = "0.1.0"
