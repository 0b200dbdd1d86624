"""hwact: a hardware-oriented compiler and export toolchain for PyTorch models."""

__version__ = "0.1.0"
