"""Test helpers: project copies, the train-stage project, real servers, a real browser."""
