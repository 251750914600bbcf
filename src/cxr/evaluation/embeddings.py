"""An embedding map: the penultimate-layer embeddings (what the classifier head receives) of
the train and test splits, laid out in 2-D by t-SNE (scikit-learn), coloured by class, with
misclassified images marked.

Embeddings above 50 dimensions are first reduced to 50 by PCA (the usual t-SNE recipe: it
removes noise and makes t-SNE faster); t-SNE starts from PCA and is seeded, so the same model
and images give the same map. Perplexity is capped at (images - 1) / 3, which scikit-learn
needs. The map is fitted on all splits together, so train and test points share its axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from cxr.training.inference import predict_logits
from cxr.training.models import MODELS

PCA_DIMENSIONS = 50


@torch.no_grad()
def embed(
    model: nn.Module, arch: str, pixels: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float64 embeddings (the head's input; spatially averaged where the head is a
    convolution) and (N, C) softmax probabilities for uint8 (N, 1, S, S) pixels."""
    head = model.get_submodule(MODELS[arch].head)
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        inputs = args[0].float()
        captured.append((inputs.mean(dim=(2, 3)) if inputs.dim() == 4 else inputs).cpu())

    handle = head.register_forward_pre_hook(keep)
    try:
        logits = predict_logits(model, arch, pixels, batch_size, device)
    finally:
        handle.remove()
    features = torch.cat(captured).flatten(1).double().numpy()
    return features, logits.softmax(1).double().numpy()


def sample(n: int, limit: int, seed: int) -> np.ndarray:
    """All indices when n <= limit, else a seeded sorted sample of `limit`."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def tsne_map(features: np.ndarray, perplexity: float, seed: int) -> tuple[np.ndarray, float]:
    """2-D t-SNE coordinates of `features` (PCA to 50 dimensions first when larger) and the
    final KL divergence."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 images, got {n}")
    if features.shape[1] > PCA_DIMENSIONS and n > PCA_DIMENSIONS:
        features = PCA(PCA_DIMENSIONS, random_state=seed).fit_transform(features)
    tsne = TSNE(
        n_components=2,
        perplexity=min(perplexity, (n - 1) / 3),
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    coordinates = tsne.fit_transform(features)
    return coordinates, float(tsne.kl_divergence_)


def embedding_table(
    parts: dict[str, tuple[list[str], np.ndarray, np.ndarray]],
    classes: tuple[str, ...],
    coordinates: np.ndarray,
) -> pd.DataFrame:
    """plots/embeddings.csv: one row per image (split, file, class, predicted, outcome, x,
    y); `parts` maps a split to (files, labels, probabilities) in the order of `coordinates`."""
    rows = []
    for split, (files, labels, probabilities) in parts.items():
        predicted = probabilities.argmax(1)
        for file, label, guess in zip(files, labels, predicted, strict=True):
            rows.append(
                {
                    "split": split,
                    "image": file,
                    "class": classes[label],
                    "predicted": classes[guess],
                    "outcome": "correct" if label == guess else "misclassified",
                }
            )
    table = pd.DataFrame(rows)
    table["x"], table["y"] = coordinates[:, 0].round(4), coordinates[:, 1].round(4)
    return table


def summary(table: pd.DataFrame, perplexity: float, kl_divergence: float) -> dict[str, Any]:
    """reports/embeddings.json: images per split and outcome, t-SNE's settings and fit."""
    counts = table.groupby(["split", "outcome"]).size()
    return {
        "images": {
            split: {outcome: int(n) for (s, outcome), n in counts.items() if s == split}
            for split in table["split"].unique()
        },
        "perplexity": round(perplexity, 6),
        "kl_divergence": round(kl_divergence, 6),
    }


def embedding_figure(table: pd.DataFrame, title: str) -> Figure:
    """The map: one colour per class, train points small and faint, test points larger,
    misclassified images as crosses."""
    from matplotlib import colormaps

    figure = Figure(figsize=(8, 6.5), layout="constrained")
    axis = figure.subplots()
    colours = colormaps["tab10"]
    for k, name in enumerate(sorted(table["class"].unique())):
        for split, size, alpha in (("train", 10, 0.35), ("val", 16, 0.6), ("test", 28, 0.9)):
            for outcome, marker in (("correct", "o"), ("misclassified", "x")):
                rows = table[
                    (table["class"] == name)
                    & (table["split"] == split)
                    & (table["outcome"] == outcome)
                ]
                if rows.empty:
                    continue
                label = f"{name} · {split}" + (" · misclassified" if outcome != "correct" else "")
                axis.scatter(
                    rows["x"],
                    rows["y"],
                    s=size * (2 if marker == "x" else 1),
                    alpha=alpha,
                    color=colours(k % 10),
                    marker=marker,
                    label=label,
                    linewidths=1.2 if marker == "x" else 0,
                )
    axis.set(xlabel="t-SNE 1", ylabel="t-SNE 2", title=title, xticks=[], yticks=[])
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return figure
