"""Graph passes, one per file, named <verb>_<what>.py; see hwact.passes.base for the contract."""
