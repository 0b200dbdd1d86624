"""Logic-gate networks on real data: soft vs discrete accuracy, gates and depth before/after lower-logic.

For each config (digits 2000,2000; breast cancer 1000,1000; digits 6 x 1000 with residual init),
parametrization (softmax16, iwp) and seed, trains
a LogicNet with hwact.train.logic (same code as `hwact train-logic`), then reports on the held-out split
the soft (train-mode relaxation) and discrete (argmax gate / thresholded truth table) accuracy, and the
netlist size before/after `simplify` (lower-logic) with its logic depth. The simplified netlist is
checked to give the same class counts as the unsimplified one on the held-out inputs.

    python benchmarks/bench_logic_accuracy.py [--seeds 0,1,2] [--epochs 40] [--out benchmarks/results/logic_accuracy.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hwact.passes.lower_logic import simplify
from hwact.report import machine
from hwact.train.logic import load_logic_data, split, train_logic

# (data, layer widths, init): two wide layers (Gaussian init), and a deep digits net with residual init
# (pass-through-biased gates, ALGORITHMS.md §5.2), where simplification removes most gates and levels
CONFIGS = [("digits", (2000, 2000), "gaussian"), ("breast-cancer", (1000, 1000), "gaussian"),
           ("digits", (1000,) * 6, "residual")]


def run(seeds: list[int], epochs: int, parametrizations: list[str]) -> list[dict]:
    rows = []
    for data_name, widths, init in CONFIGS:
        data = load_logic_data(data_name)
        for parametrization in parametrizations:
            for seed in seeds:
                x_train, y_train, x_test, y_test = split(data, 0.25, seed)
                result = train_logic(x_train, y_train, x_test, y_test, data.num_classes, widths, parametrization,
                                     init=init, encoding=data.encoding, epochs=epochs, seed=seed,
                                     progress=False)
                netlist = result.model.to_netlist()
                start = time.perf_counter()
                simplified, stats = simplify(netlist)
                simplify_s = time.perf_counter() - start
                bits = result.model.encoder(torch.as_tensor(x_test)).numpy().astype(np.uint8)
                assert np.array_equal(simplified.class_counts(bits), netlist.class_counts(bits))
                discrete_netlist = float((simplified.class_counts(bits).argmax(1) == y_test).mean())
                row = {"data": data_name, "layers": ",".join(map(str, widths)), "init": init, "parametrization": parametrization,
                       "seed": seed, "epochs": epochs, "soft": result.soft_accuracy,
                       "discrete": result.discrete_accuracy, "discrete_netlist": discrete_netlist,
                       "gates_before": stats["gates_before"], "gates_after": stats["gates_after"],
                       "depth_before": stats["depth_before"], "depth_after": stats["depth_after"],
                       "train_s": result.seconds, "simplify_s": simplify_s}
                rows.append(row)
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    out = ["# Logic-gate networks: accuracy soft vs discrete, netlist size before/after lower-logic\n",
           f"Command: `{command}`  ",
           f"Machine: {machine()['cpu']}, {machine()['cores']} cores ({platform.system()}), torch {torch.__version__}, "
           "CPU training (train s is wall time on a machine shared with other jobs: not a speed measurement). Held-out split: 25% stratified, per seed. Thermometer encoding, 3 levels per feature "
           "(digits: evenly spaced, breast cancer: training quantiles). Adam lr 0.01, batch 100.\n",
           "Soft = train-mode relaxation; discrete = argmax gate / thresholded truth table (the exported netlist; "
           "the simplified netlist gives identical class counts, checked). Gates/depth: the netlist before and "
           "after `simplify` (constant propagation, pass-through/NOT folding, duplicate merging, dead gates).\n",
           "## Per run\n",
           "| data | layers | init | parametrization | seed | epochs | soft acc | discrete acc | gates before | gates after | "
           "depth before | depth after | train s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['data']} | {r['layers']} | {r['init']} | {r['parametrization']} | {r['seed']} | {r['epochs']} | "
                   f"{r['soft']:.4f} | {r['discrete']:.4f} | {r['gates_before']} | {r['gates_after']} | "
                   f"{r['depth_before']} | {r['depth_after']} | {r['train_s']:.1f} |")
    out += ["\n## Mean over seeds\n",
            "| data | layers | init | parametrization | seeds | soft acc | discrete acc | gates after / before | depth before -> after |",
            "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["layers"], r["init"], r["parametrization"]), []).append(r)
    for (data, layers, init, parametrization), group in groups.items():
        soft = [r["soft"] for r in group]
        discrete = [r["discrete"] for r in group]
        ratio = statistics.mean(r["gates_after"] / r["gates_before"] for r in group)
        spread = lambda v: f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else ""  # noqa: E731
        depths = f"{max(r['depth_before'] for r in group)} -> {min(r['depth_after'] for r in group)}.." \
                 f"{max(r['depth_after'] for r in group)}"
        out.append(f"| {data} | {layers} | {init} | {parametrization} | {len(group)} | "
                   f"{statistics.mean(soft):.4f}{spread(soft)} | {statistics.mean(discrete):.4f}{spread(discrete)} | "
                   f"{ratio:.3f} | {depths} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--parametrizations", default="softmax16,iwp")
    parser.add_argument("--out", default="benchmarks/results/logic_accuracy.md")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = run([int(s) for s in args.seeds.split(",")], args.epochs, args.parametrizations.split(","))
    command = "python " + " ".join(["benchmarks/bench_logic_accuracy.py", *sys.argv[1:]])
    text = markdown(rows, command)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
