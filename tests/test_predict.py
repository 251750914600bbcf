"""`cxr-predict` on real X-rays and corrupt files, through the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tool_env

from cxr.models import ModelCard, build_model, save_checkpoint

CLASSES = ("COVID", "Normal", "Viral Pneumonia")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    card = ModelCard("resnet18", CLASSES, image_size=48, weights="none", epoch=1)
    save_checkpoint(path, build_model("resnet18", len(CLASSES)), card)
    return path


def cxr_predict(*args: str | Path) -> subprocess.CompletedProcess[str]:
    script = shutil.which("cxr-predict", path=tool_env()["PATH"])
    assert script, "the cxr-predict console script is not installed"
    return subprocess.run([script, *map(str, args)], capture_output=True, text=True, env=tool_env())


def test_real_and_corrupt_files_in_one_call(checkpoint: Path, real_images, tmp_path: Path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    cam = tmp_path / "cam.png"
    real = real_images[0]
    done = cxr_predict(real, corrupt, "--model", checkpoint, "--json", "--cam", cam)
    assert done.returncode == 1  # one file failed
    results = json.loads(done.stdout)
    assert [r["image"] for r in results] == [str(real), str(corrupt)]
    scored, failed = results
    assert set(scored["probabilities"]) == set(CLASSES)
    assert sum(scored["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert scored["predicted"] == max(scored["probabilities"], key=scored["probabilities"].get)
    assert str(corrupt) in failed["error"] and "not a readable image" in failed["error"]
    assert str(corrupt) in done.stderr
    # Several images: one overlay per readable image, named after it.
    assert (tmp_path / f"cam_{real.stem}.png").stat().st_size > 0
    assert not (tmp_path / "cam_corrupt.png").exists()


def test_table_output_and_exit_zero_when_all_files_read(
    checkpoint: Path, real_images, tmp_path: Path
):
    cam = tmp_path / "one.png"
    done = cxr_predict(real_images[-1], "--model", checkpoint, "--cam", cam, "--label", "Normal")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split()[:2] == ["image", "predicted"]
    assert row.startswith(str(real_images[-1]))
    assert cam.stat().st_size > 0


def test_unknown_label_is_a_clear_error(checkpoint: Path, real_images):
    done = cxr_predict(real_images[0], "--model", checkpoint, "--label", "Pneumonia")
    assert done.returncode == 2
    assert "--label 'Pneumonia'" in done.stderr and "COVID" in done.stderr


def test_probabilities_equal_the_evaluation_path(checkpoint: Path, real_images):
    """predict and evaluate must see the same pixels: compare with load_split + predict_logits."""
    from cxr.data import load_pixels
    from cxr.models import load_checkpoint
    from cxr.predict import predict_files
    from cxr.training import predict_logits

    files = tuple(real_images[:4])
    results = predict_files(files, checkpoint)
    model, card = load_checkpoint(checkpoint)
    with torch.no_grad():
        logits = predict_logits(
            model, load_pixels(files, card.image_size, 1), 8, torch.device("cpu")
        )
    expected = logits.softmax(1).numpy()
    got = np.array([[r.probabilities[c] for c in CLASSES] for r in results])
    assert np.allclose(got, expected, atol=2e-6)


class _Payload:
    """Unpickling this runs `touch <marker>`: what a hostile model file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_model_file_is_refused_with_exit_2(real_images, tmp_path: Path) -> None:
    # issue 16, case 8: a model file holding code. torch refuses it (weights_only=True); the
    # user gets our error and exit 2, not a traceback that suggests weights_only=False.
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "model.pt"
    torch.save({"format": 1, "card": _Payload(marker), "state_dict": {}}, hostile)
    done = cxr_predict(real_images[0], "--model", hostile)
    assert done.returncode == 2, done.stderr
    assert f"{hostile}: not a model checkpoint written by the train stage" in done.stderr
    assert "weights_only" not in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()
