"""Stage `audit`: did the model learn the disease or the hospital (cxr.evaluation.audit)?

Scores the test split intact, with the lung field hidden and with only the lung field kept;
probes the penultimate-layer embeddings of the val and test images (the model was not fitted
to them) for the image's source and, within each source holding several classes, for the
class; reads the Grad-CAM energy outside the lungs from the gradcam stage. Writes
reports/audit.json, metrics/audit.json (the headline), plots/audit.csv and plots/audit.png; the
figure goes to the MLflow run under audit/. The headline numbers and the time the stage took
are printed last.
"""

from cxr.training.kernels import pin_kernels

# Reproducible mode re-executes the stage with pinned CPU kernels: now, before the
# imports below load torch, rather than after them.
pin_kernels()

import time

import numpy as np
import pandas as pd

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import read_json, save_figure, write_csv, write_json
from cxr.data.metadata import metadata_for, patient_groups, read_metadata
from cxr.evaluation.audit import (
    CONDITIONS,
    audit_figure,
    audit_rows,
    gradcam_section,
    headline,
    lung_fields,
    occluded_views,
    occlusion_report,
    probabilities_of,
    probes,
    summary_lines,
)
from cxr.evaluation.embeddings import embed
from cxr.explanation.localisation import load_masks
from cxr.tracking.record import AUDIT_FOLDER
from cxr.tracking.runs import pipeline_run
from cxr.training.checkpoint import load_checkpoint
from cxr.training.pixels import load_split
from cxr.training.runtime import configure, enter_reproducible_mode, select_device

# The probes' images: only those the model was not fitted to. On its training images the
# embeddings are fitted to the class, so a probe finds the class within every source there
# whatever the model does on new images. Test, last, is also occluded.
SPLITS = ("val", "test")


def main() -> None:
    start = time.perf_counter()
    params = load_params()
    enter_reproducible_mode(params.train)  # the kernels and threads the model was trained with
    cfg, batch = params.audit, params.evaluate.batch_size
    with pipeline_run("audit", params) as run:
        device = select_device("auto")
        configure(params.train, device)
        model, card = load_checkpoint(layout.MODEL, device)
        metadata = read_metadata(layout.METADATA)
        features, labels, rows = [], [], []
        for split in SPLITS:
            data = load_split(layout.SPLIT / split, card.image_size, card.classes, card.prep)
            vectors, probabilities = embed(model, card.arch, data.pixels, batch, device)
            features.append(vectors)
            labels.append(data.labels.numpy())
            rows.append(metadata_for(data.files, metadata))
        test, scored = data, {"intact": probabilities}  # the last split: test, scored intact
        masks = load_masks(layout.MASKS, list(test.files), card.image_size)
        fields, masked = lung_fields(masks, card.image_size, cfg.box)
        views = occluded_views(test.pixels, fields, cfg.fill)
        for condition in CONDITIONS[1:]:
            scored[condition] = probabilities_of(model, card.arch, views[condition], batch, device)
        patients = patient_groups(rows[-1], params.split.group_by)
        occlusion = occlusion_report(labels[-1], scored, card.classes, params.evaluate, patients)
        occlusion.update(lung_masks=masked, lung_boxes=len(masks) - masked, fill=cfg.fill)
        report = {
            "occlusion": occlusion,
            "probes": probes(
                np.concatenate(features),
                np.concatenate(labels),
                pd.concat(rows, ignore_index=True),
                card.classes,
                cfg,
                params.split.group_by,
            ),
            "gradcam": gradcam_section(read_json(layout.GRADCAM_REPORT)),
        }
        table = audit_rows(occlusion, card.classes)
        figure = audit_figure(table, occlusion["chance"], occlusion["verdict"])
        write_json(layout.AUDIT_REPORT, report)
        write_json(layout.AUDIT_METRICS, headline(report))
        write_csv(layout.AUDIT_PLOT, table)
        save_figure(figure, layout.AUDIT_FIGURE)
        run.log_figure(figure, f"{AUDIT_FOLDER}/audit.png")
        for line in summary_lines(report):
            print(line)
    print(f"audit: took {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    run_stage(main)
