"""The explanation phase: Grad-CAM, LIME, and how faithful each explanation is to the model."""
