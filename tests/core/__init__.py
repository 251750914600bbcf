"""Tests of cxr.core."""
