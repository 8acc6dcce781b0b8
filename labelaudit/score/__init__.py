"""Scoring on ONNX Runtime (never torch): the formulas, inference, calibration and the dataset pipeline."""
