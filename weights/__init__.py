"""Shipped ONNX weights of fkp-track; each ``NAME.onnx`` has a model card ``NAME.md``."""
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
