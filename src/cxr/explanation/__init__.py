"""The explanation phase: Grad-CAM."""
