"""Streaming range observers: see many batches, keep a fixed-size state, report a (lo, hi) range.

No observer stores activations. Each keeps a state whose size is fixed when it is built (two numbers,
two per-channel vectors, or one histogram of `bins` counts), so calibrating on 10 or 10 000 batches uses
the same memory. `state_size()` returns the number of stored numbers (tests check it does not grow).

MinMaxObserver      lo = min x, hi = max x over everything seen (exact). Per-channel when `axis` is
                    given: lo_c = min over all dims but `axis`, likewise hi_c.
HistogramObserver   a histogram of `bins` equal bins over the symmetric interval [-R, R]. R starts at the
                    first non-zero max|x| and doubles whenever a batch reaches beyond it; doubling merges
                    bin pairs exactly (old bins 2k, 2k+1 become new bin B/4 + k), so no count is ever
                    spread by interpolation. The exact min and max are kept alongside.
  method "percentile":  lo = the (100 − p)-th percentile, hi = the p-th percentile (p = 99.99 by default),
                    read from the cumulative histogram with linear interpolation inside the bin where the
                    count is crossed, so the answer lies within one bin width (2R/B) of the exact one.
  method "mse":     the symmetric clipping value c minimising the expected quantization error
                        E[(x − Q_c(x))²],  Q_c(x) = s·clamp(round(x/s), qmin, qmax),  s = c/qmax,
                    for b-bit integers: qmin..qmax = −2^(b−1)..2^(b−1)−1 for signed data, 0..2^b−1
                    when nothing negative was seen (the uint8 stream after a ReLU). The expectation is
                    taken over the histogram, each bin represented by `points_per_bin` evenly spaced
                    points inside it (uniform density within a bin); c is searched on a grid of
                    `candidates` values in (0, max|x|]. The range returned is the observed range
                    clipped to [−c, c].

Infinite values: `observe(x, ignore_infinite=True)` (what calibrate does for intermediate tensors: a -inf
attention mask constant, e.g. from a decomposed scaled_dot_product_attention or masked_fill(-inf), flows
into them) leaves ±inf out of the range and counts them in `infinite`; NaN is always refused, and so is
any non-finite value when ignore_infinite is False (the default, and calibrate's choice for graph inputs).

A range is always returned as python floats (lo, hi) with lo ≤ 0 ≤ hi not enforced: a consumer that
needs a symmetric scale takes max(|lo|, |hi|).
"""

from __future__ import annotations

import math

import torch

from hwact.errors import InputError

METHODS = ("minmax", "percentile", "mse")


class Observer:
    """Streaming observer interface: `observe(tensor)` any number of times, then `range()`."""

    def observe(self, x: torch.Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def range(self) -> tuple[float, float]:  # pragma: no cover - interface
        raise NotImplementedError

    def state_size(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def seen(self) -> int:
        return self.count

    infinite = 0   # ±inf values left out of the range (observe(..., ignore_infinite=True))


def all_finite(x: torch.Tensor) -> bool:
    """No NaN and no ±inf in x, in one aminmax pass: a NaN anywhere makes both ends NaN, an inf is an end
    (calibrate of ViT-S/16 spent 4 s in isfinite/isinf checks and 0.2 s in the ranges themselves)."""
    if not x.numel():
        return True
    lo, hi = torch.aminmax(x)
    return math.isfinite(lo) and math.isfinite(hi)


def _checked(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"observers take floating tensors, got {getattr(x, 'dtype', type(x).__name__)}")
    x = x.detach()
    if not all_finite(x):
        raise InputError("tensor holds NaN or infinite values", hint="check the calibration data")
    return x


def _finite(observer: Observer, x: torch.Tensor, ignore_infinite: bool) -> torch.Tensor:
    """`x` checked; with ignore_infinite, its ±inf values counted in observer.infinite and dropped
    (flattened: for per-tensor observers). NaN is refused either way."""
    if not ignore_infinite:
        return _checked(x)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return _checked(x)
    x = x.detach()
    if all_finite(x):
        return x
    if bool(torch.isnan(x).any()):
        raise InputError("tensor holds NaN values", hint="check the model's weights and the calibration data")
    infinite = torch.isinf(x)
    count = int(infinite.sum())
    if not count:
        return x
    observer.infinite += count
    return x[~infinite]


class MinMaxObserver(Observer):
    """Exact running minimum and maximum; per channel along `axis` when it is given."""

    def __init__(self, axis: int | None = None):
        self.axis = axis
        self.count = 0
        self.lo: float | torch.Tensor | None = None   # float per tensor, float64 vector per channel
        self.hi: float | torch.Tensor | None = None

    def observe(self, x: torch.Tensor, ignore_infinite: bool = False) -> None:
        if self.axis is None and isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
            lo, hi = map(float, torch.aminmax(x.detach()))      # finite ends: all finite, one pass in all
            if math.isfinite(lo) and math.isfinite(hi):
                return self._extend(lo, hi, x.numel())
        x = _finite(self, x, ignore_infinite and self.axis is None)
        if x.numel() == 0:
            return
        if self.axis is None:   # the infinite values left out
            self._extend(*map(float, torch.aminmax(x)), x.numel())
            return
        channels = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        lo, hi = channels.min(dim=1).values.double(), channels.max(dim=1).values.double()
        if self.lo is not None and lo.shape != self.lo.shape:
            raise InputError(f"per-channel observer saw {lo.numel()} channels after {self.lo.numel()}")
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.count += x.numel()

    def _extend(self, lo: float, hi: float, count: int) -> None:
        """Per tensor: python floats (small tensors kept across batches fragment the heap: calibrate of
        ViT-S/16 held 420 MiB of freed activations that way)."""
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        self.count += count

    def range(self) -> tuple[float, float]:
        if self.lo is None:
            raise InputError("observer has seen no values")
        if self.axis is not None:
            return float(self.lo.min()), float(self.hi.max())
        return float(self.lo), float(self.hi)

    def channel_ranges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo_c, hi_c) per channel (float64 vectors); only for a per-channel observer."""
        if self.axis is None or self.lo is None:
            raise InputError("channel_ranges needs a per-channel observer that has seen values")
        return self.lo.clone(), self.hi.clone()

    def state_size(self) -> int:
        return 0 if self.lo is None else 2 * (self.lo.numel() if isinstance(self.lo, torch.Tensor) else 1)


class ChannelStatsObserver(Observer):
    """Per-channel count, sum, sum of squares and minimum along `axis` (float64): mean, std, min."""

    def __init__(self, axis: int):
        self.axis = axis
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.minimum: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        x = _checked(x)
        if x.numel() == 0:
            return
        channels = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1).double()
        total, squares, minimum = channels.sum(1), (channels ** 2).sum(1), channels.min(1).values
        if self.total is None:
            self.total, self.squares, self.minimum = total, squares, minimum
        else:
            self.total += total
            self.squares += squares
            self.minimum = torch.minimum(self.minimum, minimum)
        self.count += channels.shape[1]

    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def std(self) -> torch.Tensor:
        return (self.squares / self.count - self.mean() ** 2).clamp_min(0).sqrt()

    def range(self) -> tuple[float, float]:
        raise InputError("ChannelStatsObserver gives per-channel statistics, not a range")

    def state_size(self) -> int:
        return 0 if self.total is None else 3 * self.total.numel()


class HistogramObserver(Observer):
    """Fixed-size symmetric histogram with exact pairwise re-binning; percentile or MSE range."""

    def __init__(self, method: str = "percentile", bins: int = 2048, percentile: float = 99.99,
                 bits: int = 8, candidates: int = 256, points_per_bin: int = 8):
        if method not in ("percentile", "mse"):
            raise InputError(f"unknown histogram method '{method}'", hint="percentile or mse")
        if bins < 4 or bins % 4:
            raise InputError(f"histogram bins must be a multiple of 4, got {bins}")
        if not 50.0 < percentile <= 100.0:
            raise InputError(f"percentile must lie in (50, 100], got {percentile}")
        if not 2 <= bits <= 16:
            raise InputError(f"bits must lie in [2, 16], got {bits}")
        self.method, self.bins, self.percentile, self.bits = method, bins, percentile, bits
        self.candidates, self.points_per_bin = candidates, points_per_bin
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.radius = 0.0          # R: the histogram covers [-R, R]; 0 until a non-zero value is seen
        self.zeros_pending = 0     # zeros seen while R is still 0
        self.lo, self.hi = math.inf, -math.inf
        self.count = 0

    # ----- accumulation ------------------------------------------------------------------------
    def observe(self, x: torch.Tensor, ignore_infinite: bool = False) -> None:
        x = _finite(self, x, ignore_infinite)
        if x.numel() == 0:
            return
        x = x.reshape(-1).double()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self.count += x.numel()
        peak = float(x.abs().max())
        if peak == 0.0 and self.radius == 0.0:
            self.zeros_pending += x.numel()
            return
        if self.radius == 0.0:
            self.radius = peak
        while peak > self.radius:
            self._double()
        width = 2 * self.radius / self.bins
        index = torch.floor((x + self.radius) / width).long().clamp_(0, self.bins - 1)
        self.counts += torch.bincount(index, minlength=self.bins).double()
        if self.zeros_pending:
            self.counts[self.bins // 2] += self.zeros_pending
            self.zeros_pending = 0

    def _double(self) -> None:
        """[-R, R] -> [-2R, 2R]: old bins (2k, 2k+1) merge into new bin B/4 + k."""
        merged = self.counts.reshape(-1, 2).sum(dim=1)
        self.counts = torch.zeros_like(self.counts)
        quarter = self.bins // 4
        self.counts[quarter:quarter + merged.numel()] = merged
        self.radius *= 2.0

    def state_size(self) -> int:
        return self.counts.numel() + 5

    @property
    def bin_width(self) -> float:
        return 2 * self.radius / self.bins

    # ----- results -----------------------------------------------------------------------------
    def range(self) -> tuple[float, float]:
        if self.count == 0:
            raise InputError("observer has seen no values")
        if self.radius == 0.0:
            return 0.0, 0.0
        if self.method == "percentile":
            return self._percentile_range()
        c = self.mse_clip()
        return max(self.lo, -c), min(self.hi, c)

    def quantile(self, q: float) -> float:
        """The q-quantile (0 ≤ q ≤ 1) read from the histogram, interpolated inside its bin."""
        total = float(self.counts.sum())
        cumulative = torch.cumsum(self.counts, 0)
        target = q * total
        index = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64)).item())
        index = min(index, self.bins - 1)
        before = float(cumulative[index - 1]) if index > 0 else 0.0
        inside = float(self.counts[index])
        fraction = (target - before) / inside if inside > 0 else 0.0
        value = -self.radius + (index + fraction) * self.bin_width
        return min(max(value, self.lo), self.hi)

    def _percentile_range(self) -> tuple[float, float]:
        p = self.percentile / 100.0
        return self.quantile(1.0 - p), self.quantile(p)

    def _points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Representative points of each non-empty bin and their weights (count / points_per_bin)."""
        width, k = self.bin_width, self.points_per_bin
        used = torch.nonzero(self.counts).reshape(-1)
        offsets = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        points = (-self.radius + (used.double()[:, None] + offsets[None, :]) * width).reshape(-1)
        weights = (self.counts[used][:, None] / k).expand(-1, k).reshape(-1)
        points = points.clamp(self.lo, self.hi)
        return points, weights

    def expected_mse(self, clip: float, unsigned: bool | None = None) -> float:
        """E[(x − Q_clip(x))²] over the histogram for the observer's bit width."""
        points, weights = self._points()
        return float(self._mse(points, weights, torch.tensor([clip], dtype=torch.float64), unsigned)[0])

    def _levels(self, unsigned: bool | None) -> tuple[int, int]:
        if unsigned is None:
            unsigned = self.lo >= 0
        return (0, 2 ** self.bits - 1) if unsigned else (-(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1)

    def _mse(self, points, weights, clips, unsigned=None) -> torch.Tensor:
        qmin, qmax = self._levels(unsigned)
        scales = (clips / qmax)[:, None]
        quantized = torch.clamp(torch.round(points[None, :] / scales), qmin, qmax) * scales
        return ((quantized - points[None, :]) ** 2 * weights[None, :]).sum(dim=1) / weights.sum()

    def mse_clip(self, unsigned: bool | None = None) -> float:
        """The clipping value c in (0, max|x|] with the smallest expected quantization MSE."""
        peak = max(abs(self.lo), abs(self.hi))
        if peak == 0.0:
            return 0.0
        points, weights = self._points()
        clips = peak * torch.arange(1, self.candidates + 1, dtype=torch.float64) / self.candidates
        errors = torch.cat([self._mse(points, weights, chunk, unsigned) for chunk in clips.split(32)])
        return float(clips[int(torch.argmin(errors))])


def make_observer(method: str, **options) -> Observer:
    """The per-tensor observer for a calibration method: minmax | percentile | mse."""
    if method == "minmax":
        return MinMaxObserver()
    if method in ("percentile", "mse"):
        return HistogramObserver(method, **options)
    raise InputError(f"unknown calibration method '{method}'", hint="known methods: " + ", ".join(METHODS))
