"""fkp-track export: checkpoints to self-describing ONNX files."""
