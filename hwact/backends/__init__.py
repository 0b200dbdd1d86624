"""Backends: each takes a Graph and a target, writes artifacts into a folder, returns what it wrote."""
