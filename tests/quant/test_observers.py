import numpy as np
import pytest
import torch

from hwact.errors import InputError
from hwact.quant.observers import HistogramObserver, MinMaxObserver, make_observer


def batches(seed=0, count=10, size=5000, dist="normal"):
    generator = np.random.default_rng(seed)
    for _ in range(count):
        if dist == "laplace":
            yield torch.from_numpy(generator.laplace(0.0, 1.0, size))
        else:
            yield torch.from_numpy(generator.normal(0.5, 2.0, size))


def true_mse(values: torch.Tensor, clip: float, qmin=-128, qmax=127) -> float:
    scale = clip / qmax
    return float(((torch.clamp(torch.round(values / scale), qmin, qmax) * scale - values) ** 2).mean())


def test_minmax_is_exact():
    observer = MinMaxObserver()
    data = list(batches())
    for x in data:
        observer.observe(x.float())
    whole = torch.cat(data).float().numpy()
    assert observer.range() == (float(whole.min()), float(whole.max()))


def test_minmax_per_channel_matches_numpy():
    generator = torch.Generator().manual_seed(1)
    data = [torch.randn(4, 6, 3, 3, generator=generator) * torch.arange(1, 7).reshape(1, 6, 1, 1) for _ in range(5)]
    observer = MinMaxObserver(axis=1)
    for x in data:
        observer.observe(x)
    lo, hi = observer.channel_ranges()
    whole = torch.cat(data).numpy()
    np.testing.assert_array_equal(lo.numpy(), whole.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(hi.numpy(), whole.max(axis=(0, 2, 3)))
    assert observer.range() == (float(whole.min()), float(whole.max()))
    with pytest.raises(InputError, match="channels"):
        observer.observe(torch.randn(2, 5, 3, 3))


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
def test_percentile_within_one_bin_of_numpy(percentile):
    observer = HistogramObserver("percentile", percentile=percentile)
    # growing batches force several re-binnings (range doubles as the scale grows)
    data = [x * (1 + i) for i, x in enumerate(batches(count=8))]
    for x in data:
        observer.observe(x)
    assert observer.radius > float(data[0].abs().max()) * 2  # it re-binned at least twice
    whole = torch.cat(data).numpy()
    lo, hi = observer.range()
    # nearest-rank percentiles (the smallest x with CDF(x) >= q): numpy's default interpolates between
    # order statistics, which in sparse tails can sit more than a bin away from both of them
    expected_lo, expected_hi = np.percentile(whole, [100 - percentile, percentile], method="inverted_cdf")
    assert abs(lo - expected_lo) <= observer.bin_width
    assert abs(hi - expected_hi) <= observer.bin_width
    assert observer.counts.sum().item() == whole.size


def test_rebinning_keeps_every_count_and_is_exact():
    observer = HistogramObserver("percentile", bins=8)
    observer.observe(torch.tensor([-0.9, -0.1, 0.1, 0.9]))   # R = 0.9, bins of 0.225
    before = observer.counts.clone()
    observer.observe(torch.tensor([1.5]))                   # R -> 1.8: pairs merge into the middle half
    assert observer.radius == pytest.approx(1.8)
    assert observer.counts[2:6].tolist() == before.reshape(-1, 2).sum(1).tolist()
    assert observer.counts.sum().item() == 5
    assert observer.counts[7].item() == 1                   # 1.5 sits in the last bin [1.35, 1.8)


def test_mse_range_beats_minmax_on_heavy_tailed_data():
    observer = HistogramObserver("mse")
    data = list(batches(dist="laplace"))
    for x in data:
        observer.observe(x)
    whole = torch.cat(data)
    peak = float(whole.abs().max())
    clip = observer.mse_clip()
    lo, hi = observer.range()
    assert 0 < clip < 0.9 * peak
    assert (lo, hi) == (max(float(whole.min()), -clip), min(float(whole.max()), clip))
    assert true_mse(whole, clip) < 0.9 * true_mse(whole, peak)
    # the histogram estimate of the error agrees with the error on the real data
    assert observer.expected_mse(clip) == pytest.approx(true_mse(whole, clip), rel=0.05)


def test_mse_uses_unsigned_levels_for_non_negative_data():
    observer = HistogramObserver("mse")
    data = [x.abs() for x in batches(dist="laplace")]
    for x in data:
        observer.observe(x)
    lo, hi = observer.range()
    whole = torch.cat(data)
    assert lo >= 0 and hi < float(whole.max())
    assert true_mse(whole, hi, 0, 255) < true_mse(whole, float(whole.max()), 0, 255)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_state_size_does_not_grow_with_batches(method):
    observer = make_observer(method)
    sizes = []
    for i, x in enumerate(batches(count=40, size=2000)):
        observer.observe(x * (1 + i % 7))
        sizes.append(observer.state_size())
    assert len(set(sizes)) == 1 and sizes[0] <= 2048 + 5


def test_all_zero_then_values():
    observer = HistogramObserver("percentile", percentile=100.0)
    observer.observe(torch.zeros(10))
    assert observer.range() == (0.0, 0.0)
    observer.observe(torch.tensor([1.0, -2.0]))
    assert observer.counts.sum().item() == 12
    assert observer.range() == (-2.0, 1.0)


def test_bad_inputs():
    with pytest.raises(InputError, match="unknown calibration method 'kl'"):
        make_observer("kl")
    with pytest.raises(InputError, match="NaN"):
        MinMaxObserver().observe(torch.tensor([1.0, float("nan")]))
    with pytest.raises(InputError, match="floating"):
        HistogramObserver().observe(torch.tensor([1, 2]))
    with pytest.raises(InputError, match="no values"):
        MinMaxObserver().range()
    with pytest.raises(InputError, match="multiple of 4"):
        HistogramObserver(bins=10)



@pytest.mark.parametrize("where", [0, 77_777, 196_607])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_single_nan_or_inf_anywhere_in_a_large_tensor_is_found(where, dtype):
    # the finiteness check is one aminmax pass: NaN must reach both ends, an inf must be an end
    clean = torch.randn(4, 128, 384, generator=torch.Generator().manual_seed(3)).to(dtype)
    for bad, refused in ((float("nan"), "NaN"), (float("inf"), "infinite"), (float("-inf"), "infinite")):
        x = clean.clone()
        x.view(-1)[where] = bad
        with pytest.raises(InputError, match=refused):
            MinMaxObserver().observe(x)
        with pytest.raises(InputError, match=refused):
            HistogramObserver().observe(x)
    x = clean.clone()
    x.view(-1)[where] = float("-inf")
    observer = MinMaxObserver()
    observer.observe(x, ignore_infinite=True)     # calibrate's choice for intermediates: counted, left out
    assert observer.infinite == 1
    kept = torch.cat([clean.view(-1)[:where], clean.view(-1)[where + 1:]]).float()
    assert observer.range() == (float(kept.min()), float(kept.max()))
    x.view(-1)[where // 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        MinMaxObserver().observe(x, ignore_infinite=True)

def test_channel_stats_match_numpy_and_stay_bounded():
    from hwact.quant.observers import ChannelStatsObserver

    generator = torch.Generator().manual_seed(2)
    data = [torch.randn(8, 5, 7, generator=generator) + torch.arange(5.0).reshape(1, 5, 1) for _ in range(6)]
    observer = ChannelStatsObserver(axis=1)
    sizes = []
    for x in data:
        observer.observe(x)
        sizes.append(observer.state_size())
    whole = torch.cat(data).double()
    torch.testing.assert_close(observer.mean(), whole.mean((0, 2)))
    torch.testing.assert_close(observer.std(), whole.std((0, 2), unbiased=False))
    torch.testing.assert_close(observer.minimum, whole.amin((0, 2)))
    assert set(sizes) == {15}
