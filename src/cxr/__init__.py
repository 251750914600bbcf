"""cxr: a reproducible chest X-ray classification pipeline."""
