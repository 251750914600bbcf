"""Tests of cxr.training."""
