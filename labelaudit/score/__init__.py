"""Scoring (never torch): probability sources (ONNX Runtime, or the user's own), the formulas, the flag rule,
calibration and the dataset pipeline."""
