"""benchmarks/bootstrap_metrics.py runs on a predictions file as the evaluate stage writes it
and finds the project's intervals equal to scikit-learn's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from cxr.evaluation.metrics import predictions_frame
from tests.helpers.project import PROJECT


def test_benchmark_finds_the_same_intervals_as_scikit_learn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    probabilities = rng.dirichlet(np.ones(3), 60)
    probabilities[np.arange(30), truth[:30]] += 1.0  # a model better than chance
    probabilities /= probabilities.sum(1, keepdims=True)
    patients = np.repeat(np.arange(40), [2] * 20 + [1] * 20)
    frame = predictions_frame(
        [f"x/{i}.png" for i in range(60)], truth, probabilities, ("A", "B", "C"), patients
    )
    frame.to_csv(tmp_path / "predictions.csv", index=False)

    script = "benchmarks/bootstrap_metrics.py"
    done = subprocess.run(
        [sys.executable, script, str(tmp_path / "predictions.csv"), "--resamples", "50"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )

    assert done.returncode == 0, done.stderr
    assert "60 images (40 patients), 3 classes" in done.stdout
    assert done.stdout.count("same as scikit-learn") == 4
    assert "faster" in done.stdout
