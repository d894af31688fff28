"""fkp-track runtime: numpy, OpenCV and onnxruntime only (never torch)."""
