"""The tutorial's objective over sparse ratings: the public face of :mod:`fastcofi.train.objective`."""

from .train.objective import cost_and_grad

__all__ = ["cost_and_grad"]
