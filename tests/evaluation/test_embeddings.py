"""Embedding map (cxr.evaluation.embeddings): the head's input as embedding, t-SNE shape and
determinism with a fixed seed, the table's outcome marks; the embed stage's map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.evaluation.embeddings import embed, embedding_table, sample, tsne_map
from cxr.training.inference import Normalize
from cxr.training.models import build_model


def test_embeddings_are_what_the_head_receives():
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    pixels = torch.randint(0, 256, (5, 1, 40, 40), dtype=torch.uint8)
    features, probabilities = embed(model, "resnet18", pixels, 2, torch.device("cpu"))
    body = torch.nn.Sequential(*list(model.children())[:-1])  # everything but fc
    with torch.no_grad():
        inputs = Normalize("resnet18")(pixels)
        expected = body(inputs).flatten(1)
        logits = model(inputs)
    assert features.shape == (5, 512)
    assert np.allclose(features, expected.numpy(), atol=1e-5)
    assert np.allclose(probabilities, logits.softmax(1).numpy(), atol=1e-6)


def test_tsne_is_two_dimensional_and_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    # two well separated clusters in 80 dimensions (PCA to 50 first)
    features = np.concatenate([rng.normal(0, 1, (30, 80)), rng.normal(8, 1, (30, 80))])
    first, kl = tsne_map(features, 30.0, seed=3)
    again, kl_again = tsne_map(features, 30.0, seed=3)
    assert first.shape == (60, 2) and np.isfinite(first).all()
    assert np.array_equal(first, again) and kl == kl_again
    # the clusters stay apart: every point's nearest neighbour is of its own cluster
    distances = np.linalg.norm(first[:, None] - first[None], axis=2) + np.eye(60) * 1e9
    nearest = distances.argmin(1)
    assert ((nearest < 30) == (np.arange(60) < 30)).all()


def test_small_sets_lower_the_perplexity_and_tiny_ones_are_refused():
    features = np.random.default_rng(0).normal(size=(7, 5))
    assert tsne_map(features, 30.0, 0)[0].shape == (7, 2)  # perplexity 2 = (7 - 1) / 3
    with pytest.raises(ValueError, match="at least 4 images"):
        tsne_map(features[:3], 30.0, 0)


def test_table_marks_misclassified_images_and_sampling_is_seeded():
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
    parts = {"test": (["a.png", "b.png", "c.png"], np.array([0, 0, 1]), probabilities)}
    table = embedding_table(parts, ("A", "B"), np.arange(6.0).reshape(3, 2))
    assert list(table["outcome"]) == ["correct", "misclassified", "correct"]
    assert list(table["predicted"]) == ["A", "B", "B"] and list(table["x"]) == [0, 2, 4]
    assert np.array_equal(sample(10, 20, 0), np.arange(10))
    assert np.array_equal(sample(100, 10, 5), sample(100, 10, 5)) and len(sample(100, 10, 5)) == 10


def test_embed_stage_maps_train_and_test_with_evaluates_predictions(evaluated_project: Path):
    table = pd.read_csv(evaluated_project / "plots/embeddings.csv")
    assert table.groupby("split").size().to_dict() == {"test": 18, "train": 20}
    assert table[["x", "y"]].notna().all().all()
    # the test points' predicted classes are the evaluate stage's, image by image
    test = table[table["split"] == "test"].set_index("image")
    predictions = pd.read_csv(evaluated_project / "plots/predictions.csv").set_index("image")
    assert (test["predicted"] == predictions.loc[test.index, "predicted"]).all()
    assert ((test["outcome"] == "misclassified") == (test["class"] != test["predicted"])).all()
