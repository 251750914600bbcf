"""The evaluation phase: test-split metrics, calibration, figures and DVC plot data."""
