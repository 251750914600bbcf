"""Tests of cxr.data."""
