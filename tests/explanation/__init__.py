"""Tests of cxr.explanation."""
