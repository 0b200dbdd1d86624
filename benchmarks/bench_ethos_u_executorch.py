"""ExecuTorch 1.5.1's Arm Ethos-U backend next to hwact's own flow (integer graph -> TOSA -> Vela), same models,
same calibration data, same Vela (5.2.0) with the same system config and memory mode per target.

Per zoo model (random weights, seed 0) and target (ethos-u55-128, ethos-u85-256):
  * hwact: `hwact convert zoo:NAME --target TARGET --recipe int8-npu --calib CALIB -o OUT` in a subprocess
    (benchmarks/bench_ethos_u.py's `convert`: the whole command, including the TOSA reference-model check of
    every calibration sample), Vela's numbers from its report.json;
  * ExecuTorch: this file run by .venv-executorch's python (`--worker`), in a fresh process: load the float
    model (a torch.export .pt2 written here from hwact.models), EthosUQuantizer with
    get_symmetric_quantization_config() (int8 activations, per-channel symmetric int8 weights) calibrated on
    the same 4 seeded samples, convert_pt2e, torch.export, to_edge_transform_and_lower with the
    EthosUPartitioner (its TOSA lowering and its own Vela call), to_executorch. The worker counts the
    edge-dialect operators inside the delegates and those left outside (CPU), and the TOSA flatbuffer of
    each delegate, which ExecuTorch dumps into its intermediates folder, is compiled once more here by the
    Vela of .venv-tosa exactly as hwact compiles its own (hwact.backends.tosa_tools.vela): the cycles
    compare like for like;
  * agreement with the float model (mean cosine and top-1 of the logits on 256 random inputs, seed 11):
    hwact's int8-npu graph run in torch (what the NPU network computes, bit for bit) and ExecuTorch's
    quantized q/dq model run in torch (an approximation of its NPU network, which is not run here);
  * Vela's per-layer cycles summed per TOSA operator (U55-128), and hwact's stages for vit-tiny
    (bench_ethos_u.stages).
Cycles and times are Vela's static estimates, not measurements.

Needs `make executorch-env` (.venv-executorch: executorch 1.5.1, torch 2.13.0, tosa-tools 2026.5.0,
ethos-u-vela 5.2.0) and `make tosa-env`; without .venv-executorch it prints one 'not installed' line and
exits 0, writing nothing.

Run:  python benchmarks/bench_ethos_u_executorch.py [--models vit-tiny,cnn-tiny] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ET_PYTHON = ROOT / ".venv-executorch" / "bin" / "python"
TARGETS = ("ethos-u55-128", "ethos-u85-256")
RECIPE = "int8-npu"
DEFAULT_MODELS = "vit-tiny,vit-digits,cnn-tiny"
EVAL_SAMPLES = 256
LOWERING = "to_edge_transform_and_lower (TOSA + Vela)"
# what stays outside ExecuTorch's delegate when the whole network is delegated: the host's job in hwact's flow
BOUNDARY = {"quantized_decomposed.quantize_per_tensor.default": "input quantize",
            "quantized_decomposed.dequantize_per_tensor.default": "output dequantize"}


# ----- the worker: runs inside .venv-executorch, imports nothing from hwact ---------------------------------

def worker(pt2: Path, calib: Path, evaluation: Path, target: str, system_config: str, memory_mode: str,
           out: Path) -> dict:
    """ExecuTorch's public Ethos-U flow (as its backends/arm/test/public_api_bc/test_ethosu_flow.py runs it)
    on the float program in `pt2`; seconds per stage, operator placement,
    the TOSA files of the delegates; the quantized (q/dq) model's logits on `evaluation` in out/logits.npy."""
    times = {}
    start = time.perf_counter()
    import numpy as np
    import torch
    from executorch.backends.arm import (EthosUCompileSpec, EthosUPartitioner, EthosUQuantizer,
                                         get_symmetric_quantization_config)
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    times["import torch + executorch"] = time.perf_counter() - start

    start = time.perf_counter()
    with np.load(calib, allow_pickle=False) as data:
        batch = torch.from_numpy(data["x"])
    samples = [batch[i:i + 1] for i in range(batch.shape[0])]
    float_program = torch.export.load(str(pt2))
    spec = EthosUCompileSpec(target, system_config=system_config, memory_mode=memory_mode)
    spec.dump_intermediate_artifacts_to(str(out / "intermediates"))
    quantizer = EthosUQuantizer(spec)
    quantizer.set_global(get_symmetric_quantization_config())
    prepared = prepare_pt2e(float_program.module(), quantizer)
    for sample in samples:
        prepared(sample)
    quantized = convert_pt2e(prepared)
    program = torch.export.export(quantized, (samples[0],))
    times["quantize (prepare, calibrate, convert, export)"] = time.perf_counter() - start
    with np.load(evaluation, allow_pickle=False) as data, torch.no_grad():
        inputs = torch.from_numpy(data["x"])
        np.save(out / "logits.npy", torch.cat([quantized(inputs[i:i + 1]) for i in range(len(inputs))]).numpy())

    start = time.perf_counter()
    edge = to_edge_transform_and_lower(program, partitioner=[EthosUPartitioner(spec)])
    times[LOWERING] = time.perf_counter() - start

    graph_module = edge.exported_program().graph_module
    delegated, cpu, delegates = 0, {}, 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target.__name__ == "getitem":
            continue
        if node.target.__name__ == "executorch_call_delegate":
            lowered = getattr(graph_module, node.args[0].target)
            delegates += 1
            delegated += sum(1 for n in lowered.original_module.graph_module.graph.nodes
                             if n.op == "call_function" and n.target.__name__ != "getitem")
        else:
            cpu[node.target.__name__] = cpu.get(node.target.__name__, 0) + 1

    start = time.perf_counter()
    executorch_program = edge.to_executorch(config=ExecutorchBackendConfig(extract_delegate_segments=False))
    (out / "model.pte").write_bytes(executorch_program.buffer)
    times["to_executorch (.pte)"] = time.perf_counter() - start

    from executorch import version
    tosa = sorted(str(p) for p in (out / "intermediates").glob("output_*.tosa"))  # one per delegate
    # ExecuTorch's own Vela call writes its summary into intermediates/output (each delegate overwrites it)
    summary = sorted((out / "intermediates" / "output").glob("out_summary_*.csv"))
    own_cycles = None
    if delegates == 1 and summary:
        import csv

        with summary[0].open(newline="") as handle:
            own_cycles = int(float(next(csv.DictReader(handle))["cycles_npu"]))
    return {"executorch": version.__version__, "times": times, "delegates": delegates,
            "delegated_ops": delegated, "cpu_ops": cpu, "tosa": tosa, "own_vela_npu_cycles": own_cycles}


# ----- the driver: main environment ----------------------------------------------------------------------

def float_program(name: str, folder: Path) -> tuple[str, Path, Path, Path]:
    """zoo:NAME's float model as a torch.export program (`NAME.pt2`, batch 1), bench_ethos_u's calibration
    file (4 samples, seed 3) and EVAL_SAMPLES evaluation inputs (seed 11) with the float logits;
    (hwact model spec, calib path, pt2 path, evaluation path)."""
    import numpy as np
    import torch

    from hwact import models

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ethos_u import zoo

    model, calib = zoo(name)(folder)
    module, specs = models.build(name)
    example = tuple(spec.random(1, torch.Generator().manual_seed(0)) for spec in specs)
    pt2 = folder / f"{name}.pt2"
    torch.export.save(torch.export.export(module, example), str(pt2))
    inputs = specs[0].random(EVAL_SAMPLES, torch.Generator().manual_seed(11))
    evaluation = folder / f"{name}_eval.npz"
    with torch.no_grad():
        np.savez(evaluation, x=inputs.numpy(), logits=module(inputs).numpy())
    return model, calib, pt2, evaluation


def agreement(logits, evaluation: Path) -> tuple[float, float]:
    """(mean cosine, top-1 agreement) of `logits` to the float model's on the evaluation inputs."""
    import numpy as np

    with np.load(evaluation, allow_pickle=False) as data:
        reference = data["logits"].astype(np.float64)
    logits = np.asarray(logits, np.float64)
    cosine = (logits * reference).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1))
    return float(cosine.mean()), float((logits.argmax(1) == reference.argmax(1)).mean())


def hwact_agreement(name: str, calib: Path, evaluation: Path) -> tuple[float, float]:
    """hwact's int8-npu graph (calibrated on the same samples) against the float model, run in torch."""
    import numpy as np
    import torch

    from hwact.load import load
    from hwact.passes.manager import run_passes
    from hwact.passes.recipes import RECIPES
    from hwact.train.distill import predict

    with np.load(calib, allow_pickle=False) as data:
        batches = [(torch.from_numpy(data["x"]),)]
    recipe = RECIPES[RECIPE]
    lowered, _ = run_passes(load(f"zoo:{name}").graph, list(recipe.passes), {}, batches,
                            postconditions=recipe.postconditions)
    with np.load(evaluation, allow_pickle=False) as data:
        return agreement(predict(lowered.module, torch.from_numpy(data["x"])).numpy(), evaluation)


def executorch_row(pt2: Path, calib: Path, evaluation: Path, target: str, out: Path) -> dict:
    """One ExecuTorch lowering in a fresh .venv-executorch process, then Vela (hwact's invocation) on each
    delegate's TOSA file; cycles summed over delegates."""
    from hwact.backends import tosa_tools
    from hwact.backends.tosa_vela import estimate
    from hwact.targets import load_target

    options = load_target(target).backend_options["tosa-vela"]
    out.mkdir(parents=True)
    start = time.perf_counter()
    done = subprocess.run([str(ET_PYTHON), __file__, "--worker", str(pt2), str(calib), str(evaluation), target,
                           options["system_config"], options["memory_mode"], str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"status": "failed", "wall_s": wall, "error": done.stderr.strip().splitlines()[-1][:300]}
    row = {"status": "ok", "wall_s": wall, **json.loads(done.stdout.strip().splitlines()[-1])}
    cycles, seconds, npu_ops, vela_cpu_ops, layers = 0, 0.0, 0, 0, []
    for index, tosa in enumerate(row["tosa"]):
        model = out / f"delegate{index}.tosa"
        shutil.copyfile(tosa, model)
        summary = estimate(tosa_tools.vela(model, out / f"vela{index}", options["accelerator"],
                                           options["system_config"], options["memory_mode"]), options)
        log = (out / f"vela{index}" / "vela.log").read_text()
        cycles += summary["npu_cycles"]
        seconds += summary["estimated_inference_s"]
        npu_ops += _vela_count(log, "NPU operators")
        vela_cpu_ops += _vela_count(log, "CPU operators")
        layers += tosa_tools.vela_layers(out / f"vela{index}")
    import numpy as np

    return {**row, "npu_cycles": cycles, "estimated_inference_s": seconds, "vela_npu_ops": npu_ops,
            "vela_cpu_ops": vela_cpu_ops, "layers": layers,
            "agreement": agreement(np.load(out / "logits.npy"), evaluation)}


def cycles_by_operator(layers: list[dict]) -> dict[str, tuple[int, int]]:
    """Vela's per-layer rows summed per TOSA operator: (layers, cycles)."""
    totals = {}
    for layer in layers:
        count, cycles = totals.get(layer["operator"], (0, 0))
        totals[layer["operator"]] = (count + 1, cycles + layer["cycles"])
    return totals


def _vela_count(log: str, label: str) -> int:
    match = re.search(rf"^\s*{label}\s*=\s*(\d+)", log, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"Vela's log has no '{label}' line")
    return int(match.group(1))


def hwact_row(model: str, calib: Path, target: str, out: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ethos_u import convert

    return convert(model, calib, RECIPE, target, out)


def failed_line(name: str, flow: str, rows: dict) -> str | None:
    """The table line of a flow that failed on some target, else None."""
    if all(r["status"] == "ok" for r in rows.values()):
        return None
    reason = "; ".join(f"{t}: {r.get('error') or r.get('blockers')}" for t, r in rows.items() if r["status"] != "ok")
    return f"| zoo {name} | {flow} | failed: {reason} | | | | | | | | |"


def result_line(name: str, flow: str, placed: str, left: str, wall: str, lowering: str, rows: dict) -> str:
    """One flow's table line: its own columns, then Vela's cycles and time per target and the agreement."""
    cells = [f"{r['npu_cycles']:,} | {r['estimated_inference_s'] * 1e3:.3f}" for r in rows.values()]
    quality = "/".join(sorted({f"{r['agreement'][0]:.5f} / {r['agreement'][1]:.3f}" for r in rows.values()}))
    return f"| zoo {name} | {flow} | {placed} | {left} | {wall} | {lowering} | " + " | ".join(cells) + f" | {quality} |"


def table(results: dict) -> list[str]:
    lines = ["| model | flow | NPU ops (fraction) | ops left on the CPU | process wall s | lowering + Vela s | "
             "U55-128 NPU cycles | U55-128 est. ms | U85-256 NPU cycles | U85-256 est. ms | "
             f"cosine / top-1 vs float ({EVAL_SAMPLES} inputs) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, flows in results.items():
        for flow, rows in flows.items():
            first = rows[TARGETS[0]]
            if failed := failed_line(name, flow, rows):
                lines.append(failed)
                continue
            if flow == "hwact":
                placed = f"{first['npu_ops']} Vela ops (100 %)" if first["cpu_ops"] == 0 else \
                    f"{first['npu_ops']} of {first['npu_ops'] + first['cpu_ops']} Vela ops"
                left, lowering = "none", "-"
            else:
                compute = sum(v for k, v in first["cpu_ops"].items() if k not in BOUNDARY)
                total = first["delegated_ops"] + compute
                placed = (f"{first['delegated_ops']} of {total} edge ops ({100 * first['delegated_ops'] / total:.1f} %)"
                          f" in {first['delegates']} delegate(s); {first['vela_npu_ops']} Vela ops, "
                          f"{first['vela_cpu_ops']} on Vela's CPU")
                left = ", ".join(sorted(f"{BOUNDARY.get(k, k)} {v}" for k, v in first["cpu_ops"].items())) or "none"
                lowering = "/".join(f"{r['times'][LOWERING]:.1f}" for r in rows.values())
            wall = "/".join(f"{r['wall_s']:.1f}" for r in rows.values())
            lines.append(result_line(name, flow, placed, left, wall, lowering, rows))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="zoo model names, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ethos_u_executorch.md"))
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS,
                        metavar=("PT2", "CALIB", "EVAL", "TARGET", "SYSTEM_CONFIG", "MEMORY_MODE", "OUT"))
    args = parser.parse_args()
    if args.worker:
        pt2, calib, evaluation, target, system_config, memory_mode, out = args.worker
        print(json.dumps(worker(Path(pt2), Path(calib), Path(evaluation), target, system_config, memory_mode,
                                Path(out))))
        return
    if not ET_PYTHON.exists():
        print(f"executorch not installed: no {ET_PYTHON.relative_to(ROOT)} (run `make executorch-env`); skipped")
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-ethos-u-et-") as work:
        for name in args.models.split(","):
            model, calib, pt2, evaluation = float_program(name, Path(work))
            results[name] = {"hwact": {}, "ExecuTorch": {}}
            accuracy = hwact_agreement(name, calib, evaluation)
            for target in TARGETS:
                folder = Path(work) / name / target
                results[name]["hwact"][target] = {**hwact_row(model, calib, target, folder / "hwact"),
                                                  "agreement": accuracy}
                results[name]["ExecuTorch"][target] = executorch_row(pt2, calib, evaluation, target,
                                                                     folder / "executorch")
                for flow in ("hwact", "ExecuTorch"):
                    row = {k: v for k, v in results[name][flow][target].items() if k not in ("layers", "tosa")}
                    print(json.dumps({"model": name, "flow": flow, "target": target, **row}), flush=True)
    version = next((r.get("executorch") for f in results.values() for r in f["ExecuTorch"].values()
                    if r.get("executorch")), "?")
    load = os.getloadavg()
    lines = ["# Arm Ethos-U: hwact vs ExecuTorch's Arm backend\n",
             f"`python benchmarks/bench_ethos_u_executorch.py --models {args.models}` on {platform.machine()} "
             f"({os.cpu_count()} CPUs, shared with other jobs: load average {load[0]:.1f} at the end, so wall "
             f"times are upper bounds), `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`. "
             f"ExecuTorch {version} (torch 2.13.0+cpu, tosa-tools 2026.5.0) in .venv-executorch; hwact with "
             f"`--recipe {RECIPE}`. Same float models (zoo, random weights seed 0), same 4 calibration samples "
             "(seed 3), and every TOSA network, hwact's and each ExecuTorch delegate's, compiled by the same "
             "Vela 5.2.0 call (U55-128: Ethos_U55_High_End_Embedded, Shared_Sram; U85-256: Ethos_U85_SYS_DRAM_Mid, "
             "Dedicated_Sram_384KB). Cycles and times are Vela's static estimates, not measurements. Wall times "
             "are U55-128/U85-256, each a fresh process: hwact's is the whole `hwact convert` (recipe, TOSA "
             "lowering, reference-model check of the 4 samples, Vela, report); ExecuTorch's is import, "
             "quantization, to_edge_transform_and_lower (partitioning, its TOSA lowering, its Vela call) and "
             "to_executorch.\n", *table(results)]
    lines += ["", "ExecuTorch's stages (s, U55-128 / U85-256), and the NPU cycles of its own Vela call inside "
              "to_edge_transform_and_lower (raw output format, same system config and memory mode) as a cross-check "
              "of the recompiled delegate:\n", "| model | stage | s |", "|---|---|---|"]
    for name, flows in results.items():
        rows = [r for r in flows["ExecuTorch"].values() if r["status"] == "ok"]
        for stage in (rows[0]["times"] if rows else {}):
            lines.append(f"| zoo {name} | {stage} | " + " / ".join(f"{r['times'][stage]:.2f}" for r in rows) + " |")
        if rows:
            lines.append(f"| zoo {name} | its own Vela call: NPU cycles | "
                         + " / ".join(f"{r['own_vela_npu_cycles'] or '-':,}" for r in rows) + " |")
    lines += ["", f"Vela's per-layer cycles (its total-cycle estimate, memory included) summed per TOSA operator, "
              f"{TARGETS[0]}: layers / cycles.\n", "| model | operator | hwact | ExecuTorch |", "|---|---|---|---|"]
    for name, flows in results.items():
        if any(flows[flow][TARGETS[0]]["status"] != "ok" for flow in flows):
            continue
        ours, theirs = (cycles_by_operator(flows[flow][TARGETS[0]]["layers"]) for flow in ("hwact", "ExecuTorch"))
        def heaviest(operator: str) -> int:
            return -max(ours.get(operator, (0, 0))[1], theirs.get(operator, (0, 0))[1])

        for operator in sorted(set(ours) | set(theirs), key=heaviest):
            cells = [f"{t[operator][0]} / {t[operator][1]:,}" if operator in t else "" for t in (ours, theirs)]
            lines.append(f"| zoo {name} | {operator} | " + " | ".join(cells) + " |")
    if "vit-tiny" in results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_ethos_u import stages

        with tempfile.TemporaryDirectory(prefix="bench-ethos-u-et-stages-") as work:
            times = stages(Path(work))
        backend = sum(v for k, v in times.items() if k.startswith(("TOSA lowering", "serializer", "Vela")))
        lines += ["", f"hwact's stages for zoo vit-tiny, {TARGETS[0]}, in one process (bench_ethos_u.stages): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
                  + f"; TOSA lowering + serializer + Vela {backend:.2f} s, the counterpart of ExecuTorch's "
                  "to_edge_transform_and_lower."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
