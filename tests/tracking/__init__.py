"""Tests of cxr.tracking."""
