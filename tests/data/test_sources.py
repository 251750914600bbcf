"""The download stage's sources and ingestion, on real files, archives and a loopback server."""

from __future__ import annotations

import hashlib
import re
import http.server
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.helpers.project import tree_hashes
from PIL import Image

from cxr.core.config import ArchiveConfig, DataConfig
from cxr.data.archives import ArchiveError
from cxr.data.images import BadImageError
from cxr.data.sources import SourceError, fetch, kaggle_credentials_present


def xray(seed: int, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")


def flat_source(folder: Path, per_class: int = 3, classes=("A", "B")) -> Path:
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            xray(100 * c + i).save(folder / name / f"{name}{i}.png")
    return folder


def run_fetch(cfg: DataConfig, root: Path) -> tuple[dict, Path]:
    out = root / "project"
    out.mkdir(exist_ok=True)
    data = out / "data"
    data.mkdir(exist_ok=True)
    summary = fetch(
        cfg,
        root,
        data / "raw",
        data / "masks",
        data / "manifest.csv",
        data / "rejected.csv",
        data / "metadata.csv",
    )
    return summary, data


def add_bad_files(class_dir: Path) -> None:
    data = (class_dir / "A0.png").read_bytes()
    (class_dir / "truncated.png").write_bytes(data[: len(data) // 2])
    (class_dir / "zero.png").write_bytes(b"")
    (class_dir / "text.png").write_text("not an image")


def test_skip_lists_each_rejected_file_and_reason(tmp_path: Path) -> None:
    source = flat_source(tmp_path / "src")
    add_bad_files(source / "A")
    before = tree_hashes(source)
    summary, data = run_fetch(DataConfig(source=str(source), on_bad_image="skip"), tmp_path)
    rejected = pd.read_csv(data / "rejected.csv").set_index("source")
    assert sorted(rejected.index) == ["A/text.png", "A/truncated.png", "A/zero.png"]
    assert "not a readable image" in rejected.loc["A/truncated.png", "reason"]
    assert "empty file (0 bytes)" in rejected.loc["A/zero.png", "reason"]
    assert "not a readable image" in rejected.loc["A/text.png", "reason"]
    assert summary["rejected"] == 3 and summary["images"] == 6
    assert sorted(p.name for p in (data / "raw" / "A").iterdir()) == ["A0.png", "A1.png", "A2.png"]
    assert tree_hashes(source) == before


def test_fail_stops_naming_the_file_and_the_switch(tmp_path: Path) -> None:
    source = flat_source(tmp_path / "src")
    (source / "B" / "zero.png").write_bytes(b"")
    before = tree_hashes(source)
    with pytest.raises(BadImageError, match=r"B/zero.png: empty file.*data.on_bad_image: skip"):
        run_fetch(DataConfig(source=str(source)), tmp_path)
    assert tree_hashes(source) == before
    assert not (tmp_path / "project" / "data" / "raw").exists()  # atomic: nothing half-done


def test_tiny_image_is_a_bad_image_naming_the_file(tmp_path: Path) -> None:
    # issue 16, case 11: a 1x1 image passed without a word.
    source = flat_source(tmp_path / "src")
    xray(7, size=1).save(source / "A" / "dot.png")
    with pytest.raises(BadImageError, match=r"A/dot.png: only 1x1 px, below data.min_side=32"):
        run_fetch(DataConfig(source=str(source)), tmp_path)
    summary, data = run_fetch(DataConfig(source=str(source), on_bad_image="skip"), tmp_path)
    rejected = pd.read_csv(data / "rejected.csv")
    assert list(rejected["source"]) == ["A/dot.png"] and summary["images"] == 6


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    source = flat_source(tmp_path / "src")
    (source / "Empty").mkdir()
    before = tree_hashes(source)
    with pytest.raises(SourceError, match=r"Empty: class folder holds no images"):
        run_fetch(DataConfig(source=str(source)), tmp_path)
    assert tree_hashes(source) == before


def test_nested_archive_with_aliases_is_normalised(tmp_path: Path) -> None:
    source = flat_source(tmp_path / "src", classes=("A", "Viral Pneumonia"))
    (source / "README.txt").write_text("metadata next to the class folders")
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, arcname="Top_Folder")  # nested one level, as archives unpack
    cfg = DataConfig(source=str(archive), class_aliases={"Viral Pneumonia": "Pneumonia"})
    summary, data = run_fetch(cfg, tmp_path)
    assert summary["source_kind"] == "archive"
    assert summary["classes"] == {"A": 3, "Pneumonia": 3}
    manifest = pd.read_csv(data / "manifest.csv")
    # paths below the dataset root: the same whatever folder the archive wraps it in
    assert manifest["source"].iloc[-1] == "Viral Pneumonia/Viral Pneumonia2.png"
    assert (data / "raw" / "Pneumonia" / "Viral Pneumonia2.png").is_file()


def test_url_without_sha256_is_refused_before_downloading(tmp_path: Path) -> None:
    cfg = DataConfig(source="http://127.0.0.1:9/never.zip")
    with pytest.raises(SourceError, match=r"data\.archive\.sha256: required for a URL source"):
        run_fetch(cfg, tmp_path)


def test_kaggle_without_credentials_says_where_they_go(tmp_path: Path, monkeypatch) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    assert not kaggle_credentials_present()
    with pytest.raises(SourceError, match=r"no Kaggle credentials\. Set KAGGLE_USERNAME"):
        run_fetch(DataConfig(source="kaggle:someone/some-dataset"), tmp_path)
    monkeypatch.setenv("KAGGLE_USERNAME", "user")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key-value")
    assert kaggle_credentials_present()


# ---------------------------------------------------------------- real download on loopback


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    def handler(*args, **kwargs):
        return Quiet(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_real_download_fetches_verifies_and_normalises(
    real_data: Path, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = http_root
    archive = root / "cxr3.zip"
    expected_masks = {}
    with zipfile.ZipFile(archive, "w") as zf:
        for class_dir in sorted(p for p in real_data.iterdir() if (p / "images").is_dir()):
            mask_names = {p.name for p in (class_dir / "masks").glob("*.png")}
            images = sorted(
                (class_dir / "images").glob("*.png"), key=lambda p: (p.name not in mask_names, p)
            )[:6]
            for image in images:
                zf.write(image, f"cxr3/{class_dir.name}/images/{image.name}")
                if image.name in mask_names:
                    zf.write(
                        class_dir / "masks" / image.name,
                        f"cxr3/{class_dir.name}/masks/{image.name}",
                    )
            expected_masks[class_dir.name] = sum(image.name in mask_names for image in images)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    before = tree_hashes(real_data)

    cfg = DataConfig(source=f"{base}/cxr3.zip", archive=ArchiveConfig(sha256=sha))
    summary, data = run_fetch(cfg, tmp_path)

    assert summary["source_kind"] == "http"
    assert summary["classes"] == {name: 6 for name in expected_masks}
    assert summary["masks"] == expected_masks
    assert any(expected_masks.values())
    manifest = pd.read_csv(data / "manifest.csv", keep_default_na=False)
    for row in manifest.itertuples():
        image = Image.open(data / "raw" / row.file)
        assert image.mode == "L" and image.size == (row.width, row.height)
        if row.mask:  # masks kept as masks: same name, binary, same size
            mask = np.asarray(Image.open(data / "masks" / row.mask))
            assert set(np.unique(mask)) <= {0, 255}
            assert mask.shape == (row.height, row.width)
    assert tree_hashes(real_data) == before


def test_wrong_sha256_for_real_archive_leaves_nothing(
    http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = http_root
    (root / "data.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    cfg = DataConfig(source=f"{base}/data.zip", archive=ArchiveConfig(sha256="a" * 64, retries=0))
    with pytest.raises(ArchiveError, match=r"but data\.archive\.sha256 expects a{64}"):
        run_fetch(cfg, tmp_path)
    assert not (tmp_path / "project" / "data" / "raw").exists()
    assert list((tmp_path / "project" / "data").iterdir()) == []


def kaggle_source_with_metadata(folder: Path) -> Path:
    for c, name in enumerate(("COVID", "Normal")):
        (folder / name / "images").mkdir(parents=True)
        for i in range(3):
            xray(10 * c + i).save(folder / name / "images" / f"{name}-{i}.png")
    rows = [
        {"file": f"{name}/images/{name}-{i}.png", "patient": f"p{i // 2}", "source": "site-x"}
        for name in ("COVID", "Normal")
        for i in range(3)
        if (name, i) != ("Normal", 2)  # one image the metadata does not know
    ]
    rows.append({"file": "COVID/images/gone.png", "patient": "p9", "source": "site-x"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def test_source_metadata_is_joined_to_the_ingested_images(tmp_path: Path) -> None:
    source = kaggle_source_with_metadata(tmp_path / "src")
    summary, data = run_fetch(DataConfig(source=str(source)), tmp_path)
    metadata = pd.read_csv(data / "metadata.csv", dtype=str, keep_default_na=False)
    manifest = pd.read_csv(data / "manifest.csv")
    assert list(metadata["file"]) == list(manifest["file"])  # one row per ingested image
    row = metadata.set_index("file")
    assert row.loc["COVID/COVID-1.png", "patient"] == "p0"
    assert row.loc["COVID/COVID-1.png", "source"] == "site-x"  # its own columns, not ours
    assert row.loc["COVID/COVID-1.png", "source_file"] == "COVID/images/COVID-1.png"
    assert row.loc["Normal/Normal-2.png", "patient"] == ""  # unknown to the metadata: blank
    assert summary["metadata"]["images_with_metadata"] == 5
    assert "patient" in summary["metadata"]["columns"]


def test_metadata_without_a_file_column_is_named(tmp_path: Path) -> None:
    source = kaggle_source_with_metadata(tmp_path / "src")
    pd.DataFrame({"image": ["x"], "patient": ["p"]}).to_csv(source / "manifest.csv", index=False)
    with pytest.raises(SourceError, match=r"manifest.csv \(data.metadata\): no 'file' column"):
        run_fetch(DataConfig(source=str(source)), tmp_path)
    assert not (tmp_path / "project" / "data" / "raw").exists()  # checked before any image


def test_metadata_rows_naming_no_image_are_counted_and_warned(tmp_path: Path) -> None:
    source = kaggle_source_with_metadata(tmp_path / "src")  # lists COVID/images/gone.png
    summary, _ = run_fetch(DataConfig(source=str(source)), tmp_path)
    assert summary["metadata"]["rows_naming_no_image"] == 1
    (warning,) = summary["warnings"]
    assert "1 rows name no image" in warning and "COVID/images/gone.png" in warning


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "/etc/passwd", "COVID/../../x.png"])
def test_metadata_paths_outside_the_source_are_refused(tmp_path: Path, hostile: str) -> None:
    source = kaggle_source_with_metadata(tmp_path / "src")
    rows = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    rows.loc[len(rows)] = {"file": hostile, "patient": "p1", "source": "x"}
    rows.to_csv(source / "manifest.csv", index=False)
    with pytest.raises(SourceError, match=rf"row {len(rows) + 1}: '{re.escape(hostile)}' is not"):
        run_fetch(DataConfig(source=str(source)), tmp_path)
    assert not (tmp_path / "project" / "data" / "raw").exists()  # before any image is read
