"""Benchmark runners (measured) behind one interface."""
