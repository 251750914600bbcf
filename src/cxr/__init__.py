"""cxr: a reproducible chest X-ray classification pipeline.

The package is grouped by the pipeline phase each module serves; a phase imports only the core
and the phases before it (tests/test_architecture.py holds it to that, and to no cycles).

    core/         params (config), errors, atomic file output, paths (layout), URLs, progress,
                  the registries every name in params.yaml comes from (registry)
    data/         stages download, split, augment: sources and archives, image checks,
                  near-duplicate and patient groups, split-folders, Augmentor
    training/     stage train: models and weights, pixel stores and loaders, intensity
                  preprocessing, the loop, optimizers and schedules, resume state, DDP, runtime
                  (device, seeds, pinned kernels, environment fingerprint), inference shared by
                  every later phase
    evaluation/   stage evaluate: metrics with CIs and baselines, calibration, figures, DVC plots;
                  stage embed: the t-SNE map (embeddings); stage defer: selective prediction
                  (deferral); cxr-compare: experiments compared (compare)
    explanation/  stage gradcam: Grad-CAM, localisation against lung masks, figures, LIME,
                  deletion/insertion faithfulness of each method (faithfulness, methods)
    tracking/     MLflow: one run per pipeline run; writes no DVC output
    predict.py    cxr-predict, names.py: `python -m cxr.names` lists every registry

Stage scripts in stages/ parse params once (cxr.core.config.load_params) and pass typed
configs down; dvc.yaml lists each stage's import closure as its deps (cxr.training.code).
"""
