"""Stage `embed`: a t-SNE map of the trained model's penultimate-layer embeddings of the
`embeddings.splits` (cxr.evaluation.embeddings), coloured by class, misclassified images marked.

Writes plots/embeddings.csv (a DVC plot: split, image, class, predicted, outcome, x, y) and
reports/embeddings.json; the figure and the table go to the MLflow run under embeddings/.
"""

from cxr.training.kernels import pin_kernels

# Reproducible mode re-executes the stage with pinned CPU kernels: now, before the
# imports below load torch, rather than after them.
pin_kernels()

import numpy as np

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_csv, write_json
from cxr.evaluation.embeddings import (
    embed,
    embedding_figure,
    embedding_table,
    sample,
    summary,
    tsne_map,
)
from cxr.tracking.record import EMBEDDINGS_FOLDER
from cxr.tracking.runs import pipeline_run
from cxr.training.checkpoint import load_checkpoint
from cxr.training.pixels import load_split
from cxr.training.runtime import configure, enter_reproducible_mode, select_device


def main() -> None:
    params = load_params()
    enter_reproducible_mode(params.train)  # the kernels and threads the model was trained with
    cfg = params.embeddings
    with pipeline_run("embed", params) as run:
        device = select_device("auto")
        configure(params.train, device)
        model, card = load_checkpoint(layout.MODEL, device)
        parts, features = {}, []
        for split in cfg.splits:
            data = load_split(layout.SPLIT / split, card.image_size, card.classes, card.prep)
            rows = sample(len(data), cfg.max_images, cfg.seed)
            vectors, probabilities = embed(
                model, card.arch, data.pixels[rows], params.evaluate.batch_size, device
            )
            files = [data.files[i].relative_to(layout.SPLIT / split).as_posix() for i in rows]
            parts[split] = (files, data.labels.numpy()[rows], probabilities)
            features.append(vectors)
        coordinates, kl = tsne_map(np.concatenate(features), cfg.perplexity, cfg.seed)
        table = embedding_table(parts, card.classes, coordinates)
        perplexity = min(cfg.perplexity, (len(table) - 1) / 3)
        write_csv(layout.EMBEDDINGS, table)
        write_json(layout.EMBEDDINGS_REPORT, summary(table, perplexity, kl))
        title = f"t-SNE of {card.arch} embeddings ({', '.join(cfg.splits)} splits)"
        run.log_figure(embedding_figure(table, title), f"{EMBEDDINGS_FOLDER}/embeddings.png")
        print(f"embed: t-SNE of {len(table)} images ({', '.join(cfg.splits)}), KL {kl:.3f}")


if __name__ == "__main__":
    run_stage(main)
