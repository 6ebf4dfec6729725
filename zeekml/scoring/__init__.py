"""Detectors, threshold calibration, the combined score and the verdicts they produce."""
