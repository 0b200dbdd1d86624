"""Delta GRU benchmark: keyword spotting on espeak-ng speech, temporal sparsity and per-frame latency.

    python benchmarks/bench_delta_gru.py [--per-word 40] [--hidden 64] [--out benchmarks/results/delta_gru.md]

1. synthesize the keyword set (espeak-ng -> log-mel, hwact.data.speech; cached), split it;
2. train a small classifier: DeltaGRU(24, H) -> time-mean of h -> Linear(H, 8). First "dense-like"
   (thresholds 0, learned quantization steps), then fine-tuned with the temporal L1 penalty
   (delta_penalty) to learn sparser changes; test accuracy of the float model after each phase;
3. lower only the GRU: trace the DeltaGRU alone (eval), LowerDelta(delta_threshold=t), build the C runtime,
   run all test sequences through it (one call, every sequence its own stream), apply the Linear head
   in PyTorch to the C output h; per threshold: accuracy, fraction of x / h columns sent, MAC-weighted
   sparsity, ideal speedup, C us/frame; the C output is checked bit-exact against reference_stream;
4. anchors, same run, 1 thread: the same C kernel at threshold 0, onnxruntime on a dense float GRU
   cell with the same weights stepped one frame per session.run, torch.nn.GRU over whole sequences.
Writes the markdown to --out (numbers only from this run) and prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwact.backends import delta_gru_c  # noqa: E402
from hwact.bench.timing import best_seconds  # noqa: E402
from hwact.backends.delta_onnx import session  # noqa: E402
from hwact.data import speech  # noqa: E402
from hwact.ir.graph import InputSpec, trace  # noqa: E402
from hwact.nn.delta import DeltaGRU, delta_penalty  # noqa: E402
from hwact.passes.lower_delta import LowerDelta  # noqa: E402
from hwact.report import machine  # noqa: E402


class KeywordGRU(nn.Module):
    """DeltaGRU(features, hidden) over the frames, clip logits = Linear(time-mean of h)."""

    def __init__(self, features: int, hidden: int, classes: int):
        super().__init__()
        self.gru = DeltaGRU(features, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x).mean(dim=1))


class DenseStep(nn.Module):
    """One frame of a dense float GRU: (x (B, F), h (B, H)) -> h' (the onnxruntime anchor)."""

    def __init__(self, cell: nn.GRUCell):
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.cell(x, h)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def head_accuracy(head: nn.Linear, h: np.ndarray, y: torch.Tensor) -> float:
    """Accuracy of the PyTorch head on the time-mean of a GRU output h (N, T, H)."""
    with torch.no_grad():
        return float((head(torch.from_numpy(np.asarray(h, np.float32)).mean(dim=1)).argmax(dim=1) == y).float().mean())


def fit(model: nn.Module, x, y, epochs: int, lr: float, batch: int, seed: int, penalty: float, tag: str) -> list:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = total_penalty = 0.0
        for start in range(0, len(x), batch):
            index = order[start:start + batch]
            loss = F.cross_entropy(model(x[index]), y[index])
            reg = delta_penalty(model)
            if penalty:
                loss = loss + penalty * reg
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            total_penalty += reg.item() * len(index)
        schedule.step()
        history.append({"phase": tag, "epoch": epoch + 1, "loss": total / len(x), "penalty": total_penalty / len(x),
                        "train_sparsity_x_h": list(model.gru.last_sparsity)})
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"{tag} epoch {epoch + 1}/{epochs} loss {total / len(x):.4f} penalty {total_penalty / len(x):.3f}",
                  flush=True)
    return history


def lowered_gru(gru: DeltaGRU, threshold: float):
    """The DeltaGRU alone, traced in eval mode and lowered to hwact::delta_gru at `threshold`."""
    graph = trace(gru.eval(), [InputSpec("x", (2, speech.T_FRAMES, gru.features))], source="delta GRU")
    graph, count = LowerDelta(delta_threshold=threshold)(graph)
    if count != 1:
        raise RuntimeError(f"expected one lowered delta GRU, got {count}")
    return graph


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-word", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--delta-epochs", type=int, default=30)
    parser.add_argument("--penalty", type=float, default=0.02)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", default="0,0.02,0.05,0.1,0.2")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "delta_gru.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-delta-gru-"))
    work.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()

    # 1. data
    data = speech.build_keywords(per_word=args.per_word)
    train, test = speech.split(data)
    x, y = torch.as_tensor(train["x"]), torch.as_tensor(train["y"])
    xt, yt = torch.as_tensor(test["x"]), torch.as_tensor(test["y"])
    streams, frames, features = xt.shape
    H = args.hidden

    # 2. train: dense-like (thresholds 0), then the temporal L1 penalty
    start = time.perf_counter()
    model = KeywordGRU(features, H, len(data["words"]))
    history = fit(model, x, y, args.epochs, args.lr, args.batch, args.seed, 0.0, "dense-like")
    dense_accuracy = accuracy(model, xt, yt)
    history += fit(model, x, y, args.delta_epochs, args.lr / 3, args.batch, args.seed + 1, args.penalty, "penalty")
    delta_accuracy = accuracy(model, xt, yt)
    train_s = time.perf_counter() - start
    print(f"float accuracy: dense-like {dense_accuracy:.4f}, after penalty fine-tuning {delta_accuracy:.4f}", flush=True)
    model.eval()
    gru, head = model.gru, model.head

    # 3. lowered GRU in C, per threshold
    library = delta_gru_c.build_library(work / "c")
    x_np = np.ascontiguousarray(test["x"], np.float32)
    sweep, kernel = [], None
    for threshold in [float(t) for t in args.thresholds.split(",")]:
        graph = lowered_gru(gru, threshold)
        runtime = delta_gru_c.DeltaGRURuntime(delta_gru_c.net_blob(graph), library)
        kernel = runtime.kernel

        def run_all():
            runtime.reset(streams)            # every test sequence is its own stream, from the start state
            return runtime.run(x_np)

        y_c, fired = run_all()
        reference, ref_fired = delta_gru_c.reference_stream(graph, xt)
        error = float(np.abs(y_c.astype(np.float64) - reference.numpy().astype(np.float64)).max())
        assert error <= delta_gru_c.TOLERANCE and fired.tolist() == [list(f) for f in ref_fired], \
            f"threshold {threshold}: C differs from reference_stream (max abs {error}, {fired.tolist()} vs {ref_fired})"
        seconds = best_seconds(run_all, args.repeats)
        sent_x, sent_h = int(fired[0][0]), int(fired[0][1])
        columns = streams * frames * (features + H)
        mac_sparsity = 1 - (sent_x + sent_h) * 3 * H / (columns * 3 * H)
        sweep.append({"threshold": threshold, "accuracy": head_accuracy(head, y_c, yt),
                      "sent_x": sent_x / (streams * frames * features), "sent_h": sent_h / (streams * frames * H),
                      "mac_sparsity": mac_sparsity, "ideal": 1 / max(1 - mac_sparsity, 1e-9),
                      "c_us": 1e6 * seconds / (streams * frames), "max_abs_vs_reference": error})
        print(f"threshold {threshold:g}: {json.dumps(sweep[-1])}", flush=True)
    base = next((row for row in sweep if row["threshold"] == 0.0), None)
    if base is None:
        raise SystemExit("--thresholds must include 0 (the anchor and the bit-exactness check)")

    # 4. anchors: dense float GRU with the same weights (un-quantized), 1 thread
    cell = nn.GRUCell(features, H)
    cell.load_state_dict(gru.cell.state_dict())
    cell.eval()
    onnx_path = work / "dense_gru_step.onnx"
    dim = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(DenseStep(cell), (torch.zeros(2, features), torch.zeros(2, H)), dynamo=True,
                                opset_version=20, input_names=["x", "h"], output_names=["h_out"],
                                dynamic_shapes=({0: dim}, {0: dim}), verbose=False)
    program.save(str(onnx_path))
    sess = session(onnx_path, threads=1)
    x_frames = [np.ascontiguousarray(x_np[:, t]) for t in range(frames)]
    x_single = [[np.ascontiguousarray(x_np[i:i + 1, t]) for t in range(frames)] for i in range(streams)]
    ort_out = {}

    def ort_batched():
        h, outputs = np.zeros((streams, H), np.float32), []
        for frame in x_frames:
            h = sess.run(None, {"x": frame, "h": h})[0]
            outputs.append(h)
        ort_out["batched"] = np.stack(outputs, axis=1)

    def ort_single():
        rows = []
        for sequence in x_single:
            h, outputs = np.zeros((1, H), np.float32), []
            for frame in sequence:
                h = sess.run(None, {"x": frame, "h": h})[0]
                outputs.append(h)
            rows.append(np.concatenate(outputs))
        ort_out["single"] = np.stack(rows)

    ort_batched_us = 1e6 * best_seconds(ort_batched, args.repeats) / (streams * frames)
    ort_single_us = 1e6 * best_seconds(ort_single, max(1, min(args.repeats, 3))) / (streams * frames)

    torch_gru = nn.GRU(features, H, batch_first=True)
    with torch.no_grad():
        torch_gru.weight_ih_l0.copy_(cell.weight_ih)
        torch_gru.weight_hh_l0.copy_(cell.weight_hh)
        torch_gru.bias_ih_l0.copy_(cell.bias_ih)
        torch_gru.bias_hh_l0.copy_(cell.bias_hh)
    torch_gru.eval()
    torch_out = {}

    def torch_run():
        with torch.no_grad():
            torch_out["y"] = torch_gru(xt)[0]

    torch_us = 1e6 * best_seconds(torch_run, args.repeats) / (streams * frames)
    dense_float_accuracy = head_accuracy(head, torch_out["y"].numpy(), yt)
    anchors = {"delta_c_threshold0_us": base["c_us"], "onnxruntime_batched_us": ort_batched_us,
               "onnxruntime_batch1_us": ort_single_us, "torch_gru_us": torch_us,
               "onnxruntime_vs_torch_max_abs": float(np.abs(ort_out["batched"] - torch_out["y"].numpy()).max()),
               "onnxruntime_batch1_vs_batched_max_abs": float(np.abs(ort_out["single"] - ort_out["batched"]).max()),
               "dense_float_accuracy": dense_float_accuracy}

    summary = {"machine": machine()["cpu"], "cores": machine()["cores"], "python": platform.python_version(),
               "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
               "command": " ".join(["python benchmarks/bench_delta_gru.py", *sys.argv[1:]]),
               "dataset": {"keywords": data["words"], "train": int(len(y)), "test": int(streams), "frames": int(frames),
                           "mels": int(features)},
               "hidden": H, "epochs": args.epochs, "delta_epochs": args.delta_epochs, "penalty": args.penalty,
               "train_seconds": train_s, "float_accuracy_dense_like": dense_accuracy,
               "float_accuracy_penalty": delta_accuracy, "kernel": kernel, "tolerance": delta_gru_c.TOLERANCE,
               "sweep": sweep, "anchors": anchors, "history": history}
    summary["wall_seconds"] = time.perf_counter() - wall
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    Path(args.out).write_text(markdown(summary))
    print(f"wrote {args.out}")


def markdown(s: dict) -> str:
    a, d, H = s["anchors"], s["dataset"], s["hidden"]
    base = next(row for row in s["sweep"] if row["threshold"] == 0.0)
    lines = [
        "# Delta GRU: keyword spotting, temporal sparsity and per-frame latency",
        "",
        f"Machine: {s['machine']} ({s['cores']} cores; every engine on 1 thread), Python {s['python']}, "
        f"torch {s['torch']}, onnxruntime {s['onnxruntime']}. Command: `{s['command']}` "
        f"(wall {s['wall_seconds']:.0f} s, training {s['train_seconds']:.0f} s).",
        f"Data: espeak-ng keywords {', '.join(d['keywords'])}; {d['train']} train / {d['test']} test sequences of "
        f"{d['frames']} log-mel frames x {d['mels']} bands.",
        f"Model: DeltaGRU({d['mels']}, {H}) -> time-mean of h -> Linear({H}, {len(d['keywords'])}). Trained "
        f"{s['epochs']} epochs dense-like (thresholds 0, learned quantization steps of x and h), then "
        f"{s['delta_epochs']} epochs with the temporal L1 penalty (weight {s['penalty']:g}). Only the GRU is lowered "
        "(`lower-delta` -> int8 `hwact::delta_gru`, C runtime); the Linear head runs in PyTorch on the C output h.",
        "",
        "## Accuracy (held-out sequences)",
        "",
        "| model | accuracy |",
        "|---|---|",
        f"| float DeltaGRU after dense-like training (PyTorch, eval, threshold 0) | {s['float_accuracy_dense_like']:.4f} |",
        f"| float DeltaGRU after penalty fine-tuning (PyTorch, eval, threshold 0) | {s['float_accuracy_penalty']:.4f} |",
        f"| lowered GRU in C, threshold 0 (int8 weights) + head | {base['accuracy']:.4f} |",
        f"| dense float torch.nn.GRU, same weights, un-quantized x and h + head | {a['dense_float_accuracy']:.4f} |",
        "",
        "## Per threshold: lowered GRU in C (all test streams in one call)",
        "",
        f"Columns sent = the fired counts of the runtime / (streams x frames x width). An x column and an h column "
        f"each cost 3H = {3 * H} MACs, so MAC-weighted sparsity = 1 - (x sent + h sent) / (frames x (F + H)). "
        f"Every row was checked equal to `reference_stream` on the lowered graph (max abs error, tolerance "
        f"{s['tolerance']:g}).",
        "",
        "| threshold | accuracy | x columns sent | h columns sent | MAC sparsity | ideal speedup | C us / frame | "
        "speedup vs threshold 0 | max abs vs reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in s["sweep"]:
        lines.append(f"| {row['threshold']:g} | {row['accuracy']:.4f} | {row['sent_x']:.3f} | {row['sent_h']:.3f} | "
                     f"{row['mac_sparsity']:.3f} | {row['ideal']:.2f}x | {row['c_us']:.3f} | "
                     f"{base['c_us'] / row['c_us']:.2f}x | {row['max_abs_vs_reference']:g} |")
    lines += [
        "",
        f"## Per-frame latency anchors (same run, 1 thread, best of repeats, {d['test']} streams x {d['frames']} frames)",
        "",
        "Per frame = total time / (streams x frames). Rows 2-4 are dense float32 GRUs (the trained weights, "
        "un-quantized inputs); the C kernel is int8 weights / int32 accumulators with temporal sparsity.",
        "",
        "| engine | us / frame | delta C (threshold 0) speedup | delta C (threshold "
        f"{s['sweep'][-1]['threshold']:g}) speedup |",
        "|---|---|---|---|",
        f"| delta C kernel ({s['kernel']}), threshold 0, all streams per call | {a['delta_c_threshold0_us']:.3f} | 1.00x | "
        f"{a['delta_c_threshold0_us'] / s['sweep'][-1]['c_us']:.2f}x |",
    ]
    last = s["sweep"][-1]["c_us"]
    for name, key in (("onnxruntime, dense float GRU cell, one session.run per frame for all streams", "onnxruntime_batched_us"),
                      ("onnxruntime, same model, batch 1 (one session.run per frame per stream)", "onnxruntime_batch1_us"),
                      ("torch.nn.GRU, dense float, whole sequences, all streams", "torch_gru_us")):
        lines.append(f"| {name} | {a[key]:.3f} | {a[key] / a['delta_c_threshold0_us']:.2f}x | {a[key] / last:.2f}x |")
    lines += [
        "",
        f"onnxruntime vs torch.nn.GRU outputs: max abs {a['onnxruntime_vs_torch_max_abs']:.2g} "
        f"(batch 1 vs batched {a['onnxruntime_batch1_vs_batched_max_abs']:.2g}).",
        "",
        "## Notes",
        "",
    ]
    last_row = s["sweep"][-1]
    drop = s["float_accuracy_dense_like"] - s["float_accuracy_penalty"]
    lines += [
        f"* Accuracy: {d['test']} test sequences, one sequence = {100 / d['test']:.2f} points; the synthetic-speech task "
        f"is easy. Penalty fine-tuning changed the float accuracy by {-drop * 100:+.2f} points; the C kernel at the "
        f"largest threshold ({last_row['threshold']:g}) is at {last_row['accuracy']:.4f} vs {base['accuracy']:.4f} at 0. "
        "Thresholds are applied only at run time (the fine-tuning ran with thresholds 0).",
        f"* Sparsity vs speed: at threshold {last_row['threshold']:g} the MAC-weighted sparsity is "
        f"{last_row['mac_sparsity']:.3f} (ideal {last_row['ideal']:.2f}x) but the kernel is only "
        f"{base['c_us'] / last_row['c_us']:.2f}x faster than at threshold 0 "
        f"({base['c_us'] / last_row['c_us'] / last_row['ideal'] * base['ideal']:.2f} of the ideal ratio between the "
        f"two, {last_row['ideal']:.2f} / {base['ideal']:.2f} = {last_row['ideal'] / base['ideal']:.2f}x). Likely cause "
        f"(not profiled): with H = {H} the per-frame work that is never skipped (quantizing x and h, comparing codes, "
        f"the 3H = {3 * H} rational sigmoid / tanh gates and the h update) is a large share of the frame; the ideal "
        "counts only the column MACs.",
        f"* Against the dense float anchors batched over all streams the delta C kernel is "
        f"{'slower' if a['onnxruntime_batched_us'] < base['c_us'] else 'faster'} at threshold 0 "
        f"({a['onnxruntime_batched_us'] / base['c_us']:.2f}x vs onnxruntime, {a['torch_gru_us'] / base['c_us']:.2f}x "
        f"vs torch.nn.GRU) and {'slower' if a['onnxruntime_batched_us'] < last_row['c_us'] else 'faster'} at "
        f"{last_row['threshold']:g} ({a['onnxruntime_batched_us'] / last_row['c_us']:.2f}x, "
        f"{a['torch_gru_us'] / last_row['c_us']:.2f}x).",
        "* The dense float anchors batched over all streams are one GEMM per frame (onnxruntime) or a fused "
        "sequence kernel (torch.nn.GRU) over every stream at once; the delta kernel walks the fired columns stream "
        "by stream. The batch-1 onnxruntime row is one session.run per frame per stream, as a streaming device "
        "would call it; most of its time is the per-call overhead, so its ratio is not a kernel-for-kernel comparison "
        "(the C kernel was not timed at one call per frame).",
        "* Anchors b and c are dense float32 GRUs with the trained weights on un-quantized x and h (their accuracy is "
        "the last row of the accuracy table); the delta C kernel is int8 weights / int32 accumulators with the "
        "rational gates, bit-exact with `reference_stream` (tolerance 0, checked at every threshold above).",
        "* Missing: the delta GRU's ONNX step model is not timed here (convert_gru checks it bit-exact); no "
        "training with non-zero thresholds; one seed, no error bars; the 2-core machine is shared with other jobs "
        "while measuring; no GPU.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
