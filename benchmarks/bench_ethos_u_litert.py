"""litert-torch's PT2E -> TFLite int8 flow, compiled by Vela for Arm Ethos-U, next to hwact's own flow (integer
graph -> TOSA -> Vela): same models, same calibration data, same Vela (5.2.0) with the same system config and
memory mode per target.

Per zoo model (random weights, seed 0, as benchmarks/bench_ethos_u_executorch.py) and target (ethos-u55-128,
ethos-u85-256):
  * hwact: `hwact convert zoo:NAME --target TARGET --recipe int8-npu --calib CALIB -o OUT` in a subprocess
    (bench_ethos_u.convert), Vela's numbers from its report.json;
  * litert-torch: this file run by .venv-litert's python (`--worker`), in a fresh process, once per model: load
    the float model (the torch.export .pt2 the ExecuTorch bench writes), litert-torch's PT2EQuantizer with
    get_symmetric_quantization_config(is_per_channel=True) (static: int8 activations, per-channel symmetric
    int8 weights) -> prepare_pt2e, the same 4 seeded calibration samples, convert_pt2e(fold_quantize=False),
    then litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...)) to a .tflite. The .tflite
    is compiled here by the Vela of .venv-tosa exactly as hwact compiles its TOSA network
    (hwact.backends.tosa_tools.vela): Vela counts the operators it places on the NPU and those it leaves
    to the CPU (its log), and its per-layer CSV names them;
  * agreement with the float model (mean cosine and top-1 of the logits on the 256 random inputs, seed 11, of
    the ExecuTorch bench): hwact's int8-npu graph run in torch (what its NPU network computes, bit for bit)
    and the .tflite run by the LiteRT interpreter (ai-edge-litert) on the host CPU, int8 in and out.
Then zoo vit-digits trained on scikit-learn digits (seeds 0 and 1, as benchmarks/bench_ethos_u.py trains it),
both flows calibrated on the same 256 training images: top-1 on the digits test split for fp32, hwact int8-npu
and litert-torch's .tflite.
Vela's NPU cycles and times cover the NPU part only: for litert-torch the CPU operators (float LayerNorm,
softmax, attention matmuls, quantize/dequantize) come on top and are not estimated by Vela.

Needs `make litert-env` (.venv-litert: litert-torch 0.10.0, torch 2.13.0) and `make tosa-env`; without
.venv-litert it prints one 'not installed' line and exits 0, writing nothing.

Run:  python benchmarks/bench_ethos_u_litert.py [--models vit-tiny,cnn-tiny] [--digits-seeds 0,1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LITERT_PYTHON = ROOT / ".venv-litert" / "bin" / "python"
DEFAULT_MODELS = "vit-tiny,vit-digits,cnn-tiny"
CONVERT = "litert_torch.convert (.tflite)"


# ----- the worker: runs inside .venv-litert, imports nothing from hwact ------------------------------------

def worker(pt2: Path, calib: Path, evaluation: Path, out: Path) -> dict:
    """litert-torch's PT2E static int8 flow on the float program in `pt2`: seconds per stage, out/model.tflite,
    its operators by type (the flatbuffer's own, no delegate applied), and the interpreter's logits on
    `evaluation` (inputs quantized with the model's input scale and zero point, outputs dequantized) in
    out/logits.npy."""
    times = {}
    start = time.perf_counter()
    import numpy as np
    import torch
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    times["import torch + litert-torch"] = time.perf_counter() - start

    start = time.perf_counter()
    with np.load(calib, allow_pickle=False) as data:
        batch = torch.from_numpy(data["x"])
    samples = [batch[i:i + 1] for i in range(batch.shape[0])]
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.load(str(pt2)).module(), quantizer)
    for sample in samples:
        prepared(sample)
    quantized = convert_pt2e(prepared, fold_quantize=False)
    times["quantize (prepare, calibrate, convert)"] = time.perf_counter() - start

    start = time.perf_counter()
    model = litert_torch.convert(quantized, (samples[0],), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    model.export(str(out / "model.tflite"))
    times[CONVERT] = time.perf_counter() - start

    interpreter = Interpreter(model_path=str(out / "model.tflite"),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    ops = {}
    for op in interpreter._get_ops_details():
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    given, wanted = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = given["quantization"]
    out_scale, out_zero = wanted["quantization"]
    logits = []
    with np.load(evaluation, allow_pickle=False) as data:
        for x in data["x"]:
            code = np.clip(np.round(x[None] / in_scale) + in_zero, -128, 127).astype(given["dtype"])
            interpreter.set_tensor(given["index"], code)
            interpreter.invoke()
            logits.append((interpreter.get_tensor(wanted["index"]).astype(np.float64) - out_zero) * out_scale)
    np.save(out / "logits.npy", np.concatenate(logits))
    from litert_torch import version

    return {"litert_torch": version.__version__, "torch": torch.__version__, "times": times, "tflite_ops": ops,
            "io": f"{np.dtype(given['dtype']).name} in, {np.dtype(wanted['dtype']).name} out"}


# ----- the driver: main environment ----------------------------------------------------------------------

def litert_rows(pt2: Path, calib: Path, evaluation: Path, out: Path) -> dict:
    """One litert-torch conversion in a fresh .venv-litert process, then Vela (hwact's invocation) on the
    .tflite per target; {target: row}."""
    import numpy as np

    from bench_ethos_u_executorch import TARGETS, _vela_count, agreement
    from hwact.backends import tosa_tools
    from hwact.backends.tosa_vela import estimate
    from hwact.targets import load_target

    out.mkdir(parents=True)
    start = time.perf_counter()
    done = subprocess.run([str(LITERT_PYTHON), __file__, "--worker", str(pt2), str(calib), str(evaluation), str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        error = done.stderr.strip().splitlines()[-1][:300]
        return {target: {"status": "failed", "wall_s": wall, "error": error} for target in TARGETS}
    row = {"status": "ok", "wall_s": wall, **json.loads(done.stdout.strip().splitlines()[-1]),
           "agreement": agreement(np.load(out / "logits.npy"), evaluation)}
    rows = {}
    for target in TARGETS:
        options = load_target(target).backend_options["tosa-vela"]
        folder = out / f"vela-{target}"
        start = time.perf_counter()
        summary = estimate(tosa_tools.vela(out / "model.tflite", folder, options["accelerator"],
                                           options["system_config"], options["memory_mode"]), options)
        seconds = time.perf_counter() - start
        log = (folder / "vela.log").read_text()
        layers = tosa_tools.vela_layers(folder)
        cpu = {}
        for layer in layers:
            if layer["target"] == "CPU":
                cpu[layer["operator"]] = cpu.get(layer["operator"], 0) + 1
        rows[target] = {**row, "vela_s": seconds, "npu_cycles": summary["npu_cycles"],
                        "estimated_inference_s": summary["estimated_inference_s"],
                        "vela_npu_ops": _vela_count(log, "NPU operators"),
                        "vela_cpu_ops": _vela_count(log, "CPU operators"), "cpu_by_operator": cpu}
    return rows


def digits_rows(seed: int, work: Path) -> dict:
    """zoo vit-digits trained on scikit-learn digits from `seed` (benchmarks/bench_ethos_u.py's training and
    split), both flows calibrated on the same 256 training images: top-1 on the test split (359 images) and
    the cosine of the logits to the fp32 model's, for fp32, hwact int8-npu (in torch) and litert-torch's
    .tflite (LiteRT interpreter)."""
    import numpy as np
    import torch

    from bench_ethos_u_executorch import RECIPE, agreement
    from bench_recovery import BASELINE
    from hwact import models
    from hwact.ir.graph import trace
    from hwact.passes.manager import run_passes
    from hwact.passes.recipes import RECIPES
    from hwact.train.data import load_dataset, split
    from hwact.train.distill import predict
    from hwact.train.recover import recover

    rest, test = split(load_dataset("digits"), 0.2, seed=1234)
    module, specs = models.build("vit-digits", seed=seed)
    trained, _ = recover(trace(module, specs, "vit-digits"), "none", rest,
                         {**BASELINE, "seed": seed, "progress": False}, lambda *_a, **_k: None)
    folder = work / f"digits-{seed}"
    folder.mkdir(parents=True)
    pt2, calib, evaluation = folder / "model.pt2", folder / "calib.npz", folder / "eval.npz"
    torch.export.save(torch.export.export(trained.module, (rest.x[:1],)), str(pt2))
    np.savez(calib, x=rest.x[:256].numpy())
    reference = predict(trained.module, test.x)
    np.savez(evaluation, x=test.x.numpy(), logits=reference.numpy())
    labels = test.y.numpy()

    def top1(logits) -> float:
        return float((np.asarray(logits).argmax(1) == labels).mean())

    recipe = RECIPES[RECIPE]
    lowered, _ = run_passes(trained.copy(), list(recipe.passes), {}, [(rest.x[i:i + 32],) for i in range(0, 256, 32)],
                            postconditions=recipe.postconditions)
    ours = predict(lowered.module, test.x).numpy()
    row = {"fp32": (top1(reference.numpy()), 1.0), "hwact int8-npu": (top1(ours), agreement(ours, evaluation)[0])}
    out = folder / "litert"
    out.mkdir()
    done = subprocess.run([str(LITERT_PYTHON), __file__, "--worker", str(pt2), str(calib), str(evaluation), str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        row["litert-torch int8"] = done.stderr.strip().splitlines()[-1][:300]
    else:
        theirs = np.load(out / "logits.npy")
        row["litert-torch int8"] = (top1(theirs), agreement(theirs, evaluation)[0])
    print(json.dumps({"seed": seed, **row}), flush=True)
    return row


def table(results: dict) -> list[str]:
    from bench_ethos_u_executorch import EVAL_SAMPLES, TARGETS, failed_line, result_line

    lines = ["| model | flow | ops on the NPU (fraction) | ops left on the CPU | process wall s | "
             "lowering + Vela s | U55-128 NPU cycles | U55-128 est. ms | U85-256 NPU cycles | U85-256 est. ms | "
             f"cosine / top-1 vs float ({EVAL_SAMPLES} inputs) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, flows in results.items():
        for flow, rows in flows.items():
            if failed := failed_line(name, flow, rows):
                lines.append(failed)
                continue
            first = rows[TARGETS[0]]
            if flow == "hwact":
                placed = "/".join(f"{r['npu_ops']} of {r['npu_ops'] + r['cpu_ops']}" for r in rows.values()) \
                    + " Vela ops" + (" (100 %)" if all(r["cpu_ops"] == 0 for r in rows.values()) else "")
                left, lowering = "none", "-"
                wall = "/".join(f"{r['wall_s']:.1f}" for r in rows.values())
            else:
                tflite = sum(first["tflite_ops"].values())
                counts = [(r["vela_npu_ops"], r["vela_npu_ops"] + r["vela_cpu_ops"]) for r in rows.values()]
                placed = "/".join(f"{npu} of {total}" for npu, total in counts) + " Vela ops (" \
                    + "/".join(f"{100 * npu / total:.1f} %" for npu, total in counts) + f"); {tflite} TFLite ops"
                left = ", ".join(f"{k} {v}" for k, v in sorted(first["cpu_by_operator"].items(),
                                                                 key=lambda item: -item[1])) or "none"
                if any(r["cpu_by_operator"] != first["cpu_by_operator"] for r in rows.values()):
                    left += " (U55-128; U85-256: " + ", ".join(
                        f"{k} {v}" for k, v in sorted(rows[TARGETS[1]]["cpu_by_operator"].items())) + ")"
                lowering = "/".join(f"{first['times'][CONVERT] + r['vela_s']:.1f}" for r in rows.values())
                wall = "/".join(f"{r['wall_s'] + r['vela_s']:.1f}" for r in rows.values())
            lines.append(result_line(name, flow, placed, left, wall, lowering, rows))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="zoo model names, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ethos_u_litert.md"))
    parser.add_argument("--digits-seeds", default="0,1",
                        help="vit-digits training seeds for the top-1 table ('' to skip it)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS, metavar=("PT2", "CALIB", "EVAL", "OUT"))
    args = parser.parse_args()
    if args.worker:
        pt2, calib, evaluation, out = args.worker
        print(json.dumps(worker(Path(pt2), Path(calib), Path(evaluation), Path(out))))
        return
    if not LITERT_PYTHON.exists():
        print(f"litert-torch not installed: no {LITERT_PYTHON.relative_to(ROOT)} (run `make litert-env`); skipped")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ethos_u_executorch import RECIPE, TARGETS, float_program, hwact_agreement, hwact_row

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-ethos-u-litert-") as work:
        for name in args.models.split(","):
            model, calib, pt2, evaluation = float_program(name, Path(work))
            accuracy = hwact_agreement(name, calib, evaluation)
            results[name] = {"hwact": {target: {**hwact_row(model, calib, target, Path(work) / name / target / "hwact"),
                                                "agreement": accuracy} for target in TARGETS},
                             "litert-torch": litert_rows(pt2, calib, evaluation, Path(work) / name / "litert")}
            for flow, rows in results[name].items():
                for target, row in rows.items():
                    row = {k: v for k, v in row.items() if k != "layers"}
                    print(json.dumps({"model": name, "flow": flow, "target": target, **row}), flush=True)
        seeds = [int(s) for s in args.digits_seeds.split(",") if s.strip()]
        digits = {seed: digits_rows(seed, Path(work)) for seed in seeds}
    first = next((r for f in results.values() for r in f["litert-torch"].values() if r["status"] == "ok"), {})
    load = os.getloadavg()
    lines = ["# Arm Ethos-U: hwact vs litert-torch PT2E -> TFLite int8 -> Vela\n",
             f"`python benchmarks/bench_ethos_u_litert.py --models {args.models} --digits-seeds {args.digits_seeds}` "
             f"on {platform.machine()} "
             f"({os.cpu_count()} CPUs, shared with other jobs: load average {load[0]:.1f} at the end, so wall "
             f"times are upper bounds), `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`. "
             f"litert-torch {first.get('litert_torch', '?')} (torch {first.get('torch', '?')}, ai-edge-litert "
             "2.3.0, litert-converter 0.5.0) in .venv-litert; its PT2EQuantizer, per-channel static int8 "
             f"(`{first.get('io', '?')}`); hwact with `--recipe {RECIPE}`. Same float models (zoo, random weights "
             "seed 0), same 4 calibration samples (seed 3), and every network, hwact's TOSA file and litert-torch's "
             ".tflite, compiled by the same Vela 5.2.0 call (U55-128: Ethos_U55_High_End_Embedded, Shared_Sram; "
             "U85-256: Ethos_U85_SYS_DRAM_Mid, Dedicated_Sram_384KB). Cycles and times are Vela's static estimates "
             "of the NPU part only, not measurements: the operators Vela leaves to the CPU (litert-torch) come on "
             "top. Pairs a/b are U55-128/U85-256. Wall times: hwact's is the whole `hwact convert` (recipe, TOSA "
             "lowering, reference-model check of the 4 samples, Vela, report), one process per target; "
             "litert-torch's is one worker process (import, quantization, litert_torch.convert, 256 interpreter "
             "runs) plus that target's Vela; 'lowering + Vela' is litert_torch.convert + Vela. Agreement: hwact's "
             "int8-npu graph run in torch (bit-exact to its NPU network); litert-torch's .tflite run by the LiteRT "
             "interpreter.\n", *table(results)]
    lines += ["", "litert-torch's stages (s, one process per model):\n", "| model | stage | s |", "|---|---|---|"]
    for name, flows in results.items():
        row = flows["litert-torch"][TARGETS[0]]
        if row["status"] != "ok":
            continue
        for stage, seconds in row["times"].items():
            lines.append(f"| zoo {name} | {stage} | {seconds:.2f} |")
        lines.append(f"| zoo {name} | Vela (U55-128 / U85-256) | "
                     + " / ".join(f"{r['vela_s']:.2f}" for r in flows["litert-torch"].values()) + " |")
        lines.append(f"| zoo {name} | TFLite operators in the .tflite | "
                     + ", ".join(f"{k} {v}" for k, v in sorted(row["tflite_ops"].items(), key=lambda i: -i[1])) + " |")
    if digits:
        lines += ["", "## zoo vit-digits trained on scikit-learn digits: top-1 on the test split (359 images)\n",
                  "Training as benchmarks/bench_ethos_u.py (100 epochs, early stopping, test split 20 %, seed 1234); "
                  "both flows calibrated on the same 256 training images. Top-1 % / cosine of the logits to the fp32 "
                  "model's; hwact's int8-npu graph run in torch (bit-exact to its NPU network), litert-torch's .tflite "
                  "run by the LiteRT interpreter (its float CPU operators included).\n",
                  "| model | " + " | ".join(f"seed {s}" for s in digits) + " | mean top-1 % |",
                  "|---|" + "---|" * (len(digits) + 1)]
        for key in next(iter(digits.values())):
            cells = [r[key] for r in digits.values()]
            if any(isinstance(c, str) for c in cells):
                lines.append(f"| {key} | failed: {next(c for c in cells if isinstance(c, str))} |")
                continue
            mean = 100 * sum(c[0] for c in cells) / len(cells)
            lines.append(f"| {key} | " + " | ".join(f"{100 * c[0]:.2f} / {c[1]:.5f}" for c in cells)
                         + f" | {mean:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
