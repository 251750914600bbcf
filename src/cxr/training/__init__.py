"""The training phase: models, pixel stores (with their intensity preprocessing), the training
loop."""
