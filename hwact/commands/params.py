"""Click parameter types every command uses for numbers a user types.

FINITE: a float that is not NaN or infinite (a learning rate of inf trains NaN weights; a duration of
nan never ends). Count(low, high): an integer within bounds, where `high` is a cap no real run reaches
(hwact.limits). A bad value raises InputError, so the CLI prints one line naming the option and exits 2.
"""

from __future__ import annotations

import math

import click

from hwact.errors import InputError


def _option(param: click.Parameter | None) -> str:
    return max(param.opts, key=len) if param is not None and param.opts else "value"


class FiniteFloat(click.ParamType):
    """A finite float (NaN and infinities refused)."""

    name = "float"

    def convert(self, value, param, ctx) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            raise InputError(f"{_option(param)} {value}: not a finite number", hint="NaN and infinity are refused")
        return number


class Count(click.ParamType):
    """An integer in [low, high]."""

    name = "integer"

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def convert(self, value, param, ctx) -> int:
        number = click.INT.convert(value, param, ctx)
        if number < self.low:
            raise InputError(f"{_option(param)} must be >= {self.low}, got {number}")
        if number > self.high:
            raise InputError(f"{_option(param)} must be <= {self.high}, got {number}",
                             hint="the cap is far above real use (hwact/limits.py)")
        return number


FINITE = FiniteFloat()
