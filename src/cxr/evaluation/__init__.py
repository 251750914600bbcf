"""The evaluation phase: test-split metrics, calibration, figures and DVC plot data, the
embedding map, selective prediction (deferral) and the comparison of experiments."""
