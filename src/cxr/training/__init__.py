"""The training phase: models, pixel stores, the training loop."""
