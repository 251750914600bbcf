"""README's real-data recipe is the one benchmarks/real_recipes.py measures (issue 12: "checks
can run exactly what README says")."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.helpers.benchmarks import load_benchmark
from tests.helpers.project import project_params

ROOT = Path(__file__).resolve().parents[1]


def marked_block(marker: str) -> str:
    """The first ```bash block after the line `<!-- marker -->`, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text.split(f"<!-- {marker} -->\n", 1)[1]
    block = re.match(r"```bash\n(.*?)```", after, re.S)
    assert block, f"README: no ```bash block right after <!-- {marker} -->"
    return block.group(1).replace("\\\n", " ")


def set_params(command: str) -> dict[str, object]:
    """`-S key=value` pairs of a `dvc exp run` command, values parsed as DVC does (YAML)."""
    words = shlex.split(command)
    pairs = [words[i + 1] for i, word in enumerate(words) if word in ("-S", "--set-param")]
    return {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}


def test_readme_recipe_is_the_measured_one() -> None:
    command = marked_block("recipe:cpu")
    assert command.split()[:3] == ["dvc", "exp", "run"], command
    settings = set_params(command)
    assert settings.pop("data.source") == "<folder>", settings
    recipes = load_benchmark("real_recipes")
    assert settings == recipes.RECIPES[recipes.README_RECIPE], settings


def test_readme_recipe_keys_exist_in_params() -> None:
    params = project_params()
    for key in set_params(marked_block("recipe:cpu")):
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"README recipe: no {key} in params"
            node = node[part]


@pytest.mark.e2e  # decodes and splits all 1,258 cxrmix images
def test_readme_cxrmix_split_numbers_recompute(mix_data: Path, tmp_path: Path) -> None:
    """The "Results on cxrmix" figures about the data (test split size per class, the train
    split's share of Normal and Pneumonia from NIH; docs/results.md, where the README links),
    recomputed by splitting cxrmix with the project's own params: a changed split or a stale
    page fails here."""
    import pandas as pd

    from cxr.core.config import parse_params
    from cxr.data.sources import fetch
    from cxr.data.split import split_dataset, split_of_files

    text = (ROOT / "docs/results.md").read_text(encoding="utf-8")
    section = text.split("## Results on cxrmix", 1)[1]
    counts = re.search(
        r"test split has (\d+) images \(COVID (\d+), Normal (\d+), Pneumonia (\d+)\)", section
    )
    shares = re.search(r"Normal images (\d+) % are NIH's, of its Pneumonia images (\d+) %", section)
    assert counts and shares, "docs/results.md's cxrmix section no longer states the split"
    params = parse_params(project_params())
    data = tmp_path / "data"
    cfg = dataclasses.replace(params.data, source=str(mix_data))
    outputs = ("raw", "masks", "manifest.csv", "rejected.csv", "metadata.csv")
    fetch(cfg, ROOT, *(data / name for name in outputs))
    split = split_dataset(
        data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split", params.split
    )
    test = split["splits"]["test"]
    assert [int(g) for g in counts.groups()] == [
        sum(test.values()),
        test["COVID"],
        test["Normal"],
        test["Pneumonia"],
    ]
    metadata = pd.read_csv(data / "metadata.csv", dtype=str, keep_default_na=False)
    where = split_of_files(data / "split")
    train = metadata[metadata["file"].map(where) == "train"]
    nih = (
        train.assign(cls=train["file"].str.split("/").str[0])
        .groupby("cls")["source"]
        .apply(lambda s: round(100 * (s == "nih-cxr14").mean()))
    )
    assert [int(g) for g in shares.groups()] == [nih["Normal"], nih["Pneumonia"]]
    assert nih["COVID"] == 0  # "and not one COVID image is"
