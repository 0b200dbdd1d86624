"""Quantization helpers: streaming range observers used by the `calibrate` pass."""

from hwact.quant.observers import METHODS, HistogramObserver, MinMaxObserver, Observer, make_observer

__all__ = ["METHODS", "HistogramObserver", "MinMaxObserver", "Observer", "make_observer"]
