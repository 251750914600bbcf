"""The pipeline as users run it: real `dvc` commands in temporary git+DVC clones."""
