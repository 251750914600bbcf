"""`cxr-predict` on real X-rays and corrupt files, through the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.training.checkpoint import ModelCard, save_checkpoint
from cxr.training.models import build_model
from tests.helpers.project import tool_env

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
    # The error is printed once (in the JSON); stderr only names the files not scored.
    assert "not a readable image" not in done.stderr
    assert done.stderr.strip() == f"cxr-predict: 1 of 2 images not scored: {corrupt}"
    # Several images: one figure per readable image, named after it, listed in the JSON.
    written = tmp_path / f"cam_{real.stem}.png"
    assert scored["cam"] == str(written) and written.stat().st_size > 0
    assert "cam" not in failed
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


def test_missing_model_is_one_exact_error(real_images, tmp_path: Path):
    typo = tmp_path / "modle.pt"
    done = cxr_predict(real_images[0], "--model", typo)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"cxr-predict: error: --model {typo}: no such file; "
        "check the path (the default is models/model.pt)\n"
    )
    folder = cxr_predict(real_images[0], "--model", tmp_path)
    assert "is a folder, not a file" in folder.stderr
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    bad = cxr_predict(real_images[0], "--model", bogus)
    assert bad.returncode == 2 and "not a model checkpoint" in bad.stderr
    assert bad.stderr.count("cxr-predict: error:") == 1 and "Traceback" not in bad.stderr


def test_help_shows_defaults():
    done = cxr_predict("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: models/model.pt)" in text and "(default: auto)" in text
    assert "(default: gradcam)" in text


def test_cam_maps_share_one_absolute_scale(checkpoint: Path, real_images):
    """All classes' maps of an image are divided by the largest of them: the strongest is 1,
    the others keep their size relative to it (not each stretched to its own maximum)."""
    from cxr.predict import class_maps
    from cxr.training.checkpoint import load_checkpoint
    from cxr.training.pixels import load_pixels

    model, card = load_checkpoint(checkpoint)
    pixels = load_pixels((real_images[0],), card.image_size, 1)
    maps, probabilities = class_maps(model, card, pixels, "auto", "gradcam")
    assert maps.shape == (len(CLASSES), card.image_size, card.image_size)
    peaks = maps.reshape(len(CLASSES), -1).max(1)
    assert peaks.max() == pytest.approx(1.0) and maps.min() >= 0
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_cam_figure_shows_original_overlay_title_and_colour_bar(checkpoint, real_images, tmp_path):
    from PIL import Image

    cam = tmp_path / "cam.png"
    done = cxr_predict(real_images[0], "--model", checkpoint, "--cam", cam, "--label", "COVID")
    assert done.returncode == 0, done.stderr
    with Image.open(cam) as image:
        width, height = image.size
    assert width > 1.3 * height  # original and overlay side by side, plus the colour bar


def test_unknown_label_is_a_clear_error(checkpoint: Path, real_images):
    done = cxr_predict(real_images[0], "--model", checkpoint, "--label", "Pneumonia")
    assert done.returncode == 2
    assert "--label 'Pneumonia'" in done.stderr and "COVID" in done.stderr


def test_probabilities_equal_the_evaluation_path(checkpoint: Path, real_images):
    """predict and evaluate must see the same pixels: compare with load_split + predict_logits."""
    from cxr.predict import predict_files
    from cxr.training.checkpoint import load_checkpoint
    from cxr.training.inference import predict_logits
    from cxr.training.pixels import load_pixels

    files = tuple(real_images[:4])
    results = predict_files(files, checkpoint)
    model, card = load_checkpoint(checkpoint)
    with torch.no_grad():
        logits = predict_logits(
            model, card.arch, load_pixels(files, card.image_size, 1), 8, torch.device("cpu")
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


def predict_in_process(
    capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, str, str]:
    """cxr-predict's `main` in this process (the console script is tested above): exit status,
    stdout, stderr. Saves a torch import per call."""
    from cxr.predict import main

    status = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_deferral_rule_beside_the_model_marks_refer_and_accept(
    real_images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from cxr.core.fsio import sha256_file
    from cxr.evaluation.deferral import confidences

    model = tmp_path / "model.pt"
    torch.manual_seed(1)
    card = ModelCard("resnet18", CLASSES, image_size=48, weights="none", epoch=1)
    save_checkpoint(model, build_model("resnet18", len(CLASSES)), card)
    images = real_images[:4]
    plain = json.loads(predict_in_process(capsys, *images, "--model", model, "--json")[1])
    assert all("decision" not in r for r in plain)  # no rule beside the model: no decision
    probabilities = np.array([list(r["probabilities"].values()) for r in plain])
    calibrated = confidences(probabilities, 2.0)  # the rule's temperature, applied by hand
    threshold = float(np.median(calibrated))
    rule = {"threshold": threshold, "temperature": 2.0, "model_sha256": sha256_file(model)}
    (tmp_path / "deferral.json").write_text(json.dumps(rule))
    decided = json.loads(predict_in_process(capsys, *images, "--model", model, "--json")[1])
    assert [r["decision"] for r in decided] == [
        "accept" if c >= threshold else "refer" for c in calibrated
    ]
    assert {r["decision"] for r in decided} == {"accept", "refer"}
    assert [r["confidence"] for r in decided] == pytest.approx(calibrated, abs=1e-5)
    table = predict_in_process(capsys, images[0], "--model", model)[1]
    assert table.splitlines()[0].endswith("decision")
    # a rule of another model is refused rather than applied
    (tmp_path / "deferral.json").write_text(json.dumps({**rule, "model_sha256": "0" * 64}))
    status, _, err = predict_in_process(capsys, images[0], "--model", model)
    assert status == 2 and "chosen for another model" in err
    assert predict_in_process(capsys, images[0], "--model", model, "--no-deferral")[0] == 0


def test_conformal_sets_in_the_rule_are_printed_beside_each_prediction(
    real_images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from cxr.core.fsio import sha256_file
    from cxr.evaluation.calibration import scale_probabilities

    model = tmp_path / "model.pt"
    torch.manual_seed(2)
    card = ModelCard("resnet18", CLASSES, image_size=48, weights="none", epoch=1)
    save_checkpoint(model, build_model("resnet18", len(CLASSES)), card)
    images = real_images[:5]
    plain = json.loads(predict_in_process(capsys, *images, "--model", model, "--json")[1])
    probabilities = scale_probabilities(
        np.array([list(r["probabilities"].values()) for r in plain]), 1.5
    )
    # a calibration set whose LAC quantile falls among these images' scores
    rng = np.random.default_rng(0)
    labels = np.zeros(40, dtype=int)
    first = rng.uniform(probabilities.min(), probabilities.max(), 40)
    cal = np.column_stack([first, *[(1 - first) / (len(CLASSES) - 1)] * (len(CLASSES) - 1)])
    scores = np.sort(1 - cal[np.arange(40), labels])
    q = scores[int(np.ceil(41 * 0.9)) - 1]  # brute-force split-conformal quantile, alpha 0.1
    expected = [
        [c for c, p in zip(CLASSES, row, strict=True) if 1 - p <= q] for row in probabilities
    ]
    conformal = {
        "method": "lac",
        "alpha": 0.1,
        "mondrian": False,
        "seed": 0,
        "calibration_labels": labels.tolist(),
        "calibration_probabilities": cal.tolist(),
    }
    rule = {"threshold": 0.5, "temperature": 1.5, "model_sha256": sha256_file(model)}
    (tmp_path / "deferral.json").write_text(json.dumps(rule | {"conformal": conformal}))
    shown = json.loads(predict_in_process(capsys, *images, "--model", model, "--json")[1])
    assert [r["set"] for r in shown] == expected
    assert len({len(e) for e in expected}) > 1  # sets of different sizes: the quantile bites
    assert {r["set_coverage"] for r in shown} == {0.9}
    table = predict_in_process(capsys, *images, "--model", model)[1].splitlines()
    assert table[0].endswith("decision  set")
    assert table[1].endswith("{" + ", ".join(expected[0]) + "}")
    assert "at least 90% of images like the val split's" in table[-1]
    # a rule without conformal calibration (written before issue 25): no set, no column
    (tmp_path / "deferral.json").write_text(json.dumps(rule))
    assert (
        "set"
        not in json.loads(predict_in_process(capsys, images[0], "--model", model, "--json")[1])[0]
    )


def test_lime_figure(
    checkpoint: Path, real_images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "lime.png"
    args = (real_images[0], "--model", checkpoint, "--cam", out, "--method", "lime", "--json")
    status, stdout, err = predict_in_process(capsys, *args)
    assert status == 0, err
    assert json.loads(stdout)[0]["cam"] == str(out)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_wrong_files_as_model_and_cam_are_refused_with_a_sentence(
    checkpoint: Path, real_images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Issue 24: a checkpoint whose weights do not fit its card names the keys and shapes; a
    bare weights file (.safetensors) is refused with what it is; --cam into a missing folder
    creates nothing."""
    from safetensors.torch import save_file

    payload = torch.load(checkpoint, weights_only=True)
    head = next(k for k in payload["state_dict"] if k.endswith("fc.weight"))
    payload["state_dict"][head] = torch.zeros(5, payload["state_dict"][head].shape[1])
    del payload["state_dict"][next(iter(payload["state_dict"]))]
    altered = tmp_path / "altered.pt"
    torch.save(payload, altered)
    status, _, err = predict_in_process(capsys, real_images[0], "--model", altered)
    assert status == 2 and "do not fit its own card" in err, err
    assert f"shape of {head} (5, 512) in the file" in err and "missing " in err, err
    bare = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    status, _, err = predict_in_process(capsys, real_images[0], "--model", bare)
    assert status == 2 and "holds no model card" in err and "KeyError" not in err, err
    missing = tmp_path / "nowhere" / "deeper" / "cam.png"
    status, _, err = predict_in_process(
        capsys, real_images[0], "--model", checkpoint, "--cam", missing
    )
    assert status == 2 and f"folder {missing.parent} does not exist" in err, err
    assert not (tmp_path / "nowhere").exists()
