"""MLflow tracking: one run per pipeline run, shared by its stages."""
