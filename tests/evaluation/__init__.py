"""Tests of cxr.evaluation."""
