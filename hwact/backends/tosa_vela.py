"""tosa-vela backend: the integer graph as a TOSA 1.0 network (PRO-INT), checked bit-exact in the TOSA
reference model, compiled by Vela for an Arm Ethos-U NPU (issue 16; docs/ethos-u.md).

    check   every node lowers (hwact/backends/tosa_lower.py) or is named with the reason and the pass that
            fixes it (a float node: the int8 recipe); a TOSA network has no CPU fallback
    emit    model.tosa (written by the tosa-tools serializer from hwact's description, in the TOSA
            environment: hwact/backends/tosa_tools.py), then `vela` for the target's accelerator with an
            explicit system config and memory mode; Vela's files stay in vela/
    verify  tosa_reference_model runs model.tosa on every calibration sample; its outputs must equal the
            integer reference (the graph) bit for bit, or the convert fails and writes nothing

The network takes the codes after the graph's input quantize and returns the codes before its output
dequantize (batch 1, what an NPU runs); the two scales are in the report for the host.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from hwact.backends import tosa_lower, tosa_tools
from hwact.backends.base import Backend, BenchRequest, EmitContext, register
from hwact.errors import InputError, VerificationError
from hwact.ir.graph import Graph
from hwact.ir.record import record

NUMPY = {"int8": np.int8, "int16": np.int16, "int32": np.int32}
MODEL = "model.tosa"


def _samples(batches: list[tuple]) -> list[tuple]:
    """Every calibration sample as a batch of one."""
    return [tuple(t[i:i + 1] for t in batch) for batch in batches for i in range(len(batch[0]))]


def _codes(graph: Graph, sample: tuple, nodes: list[str]) -> dict[str, torch.Tensor]:
    values: dict = {}
    record(graph.module, [sample], lambda node, value: values.__setitem__(node.name, value) if node.name in nodes
           else None)
    return values


@register
class TosaVelaBackend(Backend):
    """Integer graphs as TOSA for Arm Ethos-U, verified in the TOSA reference model, compiled by Vela."""

    name = "tosa-vela"
    section = "ethos_u"
    options = {"accelerator": "ethos-u55-128", "system_config": "Ethos_U55_High_End_Embedded",
               "memory_mode": "Shared_Sram"}

    def check(self, graph: Graph) -> list[str]:
        return tosa_lower.problems(graph)

    def emit(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        network, scales = tosa_lower.lower(graph, _samples(context.batches)[0])
        with tempfile.TemporaryDirectory(prefix="hwact-tosa-") as work:
            description, constants = tosa_lower.write_description(network, Path(work))
            names = tosa_tools.serialize(description, constants, outdir / MODEL)
        self._network, self._scales, self._names = network, scales, names
        options = context.options
        vela_dir = outdir / "vela"
        summary = tosa_tools.vela(outdir / MODEL, vela_dir, options["accelerator"], options["system_config"],
                                  options["memory_mode"])
        cpu_ops = _count(vela_dir / "vela.log", "CPU operators")
        npu_ops = _count(vela_dir / "vela.log", "NPU operators")
        if cpu_ops != 0:
            raise VerificationError(f"vela placed {cpu_ops} operators on the CPU; a TOSA network must run on the NPU")
        context.log(f"  vela {options['accelerator']}: {summary.get('cycles_npu')} NPU cycles, "
                    f"{float(summary.get('inference_time', 'nan')) * 1e3:.3f} ms estimated")
        section = {
            **estimate(summary, options), "tosa_ops": sum(tosa_lower.op_counts(network).values()),
            "tosa_op_kinds": ", ".join(f"{k} {v}" for k, v in tosa_lower.op_counts(network).items()),
            "npu_ops": npu_ops, "cpu_ops": cpu_ops,
            "input_scales": "; ".join(f"{v['placeholder']}: scale {v['scale']:.6g}, {v['dtype']} zero point "
                                      f"{v['zero_point']}" for v in scales["inputs"].values()),
            "output_scales": "; ".join(f"{v['node']}: scale {v['scale']:.6g}, {v['dtype']} zero point "
                                       f"{v['zero_point']}" for v in scales["outputs"].values()),
        }
        section["layers"] = tosa_tools.vela_layers(vela_dir, names["tensors"])
        artifacts = [MODEL] + sorted(str(p.relative_to(outdir)) for p in vela_dir.iterdir() if p.is_file())
        return {**section, "artifacts": artifacts}

    def verify(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        network, scales, names = self._network, self._scales, self._names
        inputs = [scales["inputs"][name] for name in network.inputs]
        outputs = [scales["outputs"][name] for name in network.outputs]
        dequantize = {n.name: n for n in graph.fx.nodes if n.name in {o["node"] for o in outputs}}
        wanted = [i["node"] for i in inputs] + [dequantize[o["node"]].args[0].name for o in outputs]
        samples = _samples(context.batches)

        def check(index: int, work: Path) -> None:
            codes = _codes(graph, samples[index], wanted)
            feeds = [(codes[i["node"]].numpy() + i["zero_point"]).astype(NUMPY[i["dtype"]]) for i in inputs]
            produced = tosa_tools.reference_run(outdir / MODEL, names, feeds, work / str(index))
            for which, (spec, got) in enumerate(zip(outputs, produced)):
                want = codes[dequantize[spec["node"]].args[0].name].numpy().astype(np.int64)
                got = got.astype(np.int64) - spec["zero_point"]
                if got.shape != want.shape or not np.array_equal(got, want):
                    error = int(np.abs(got - want).max()) if got.shape == want.shape else None
                    raise VerificationError(f"tosa-vela: output {which} of the TOSA reference model differs from "
                                            f"the integer reference on calibration sample {index} (max |err| "
                                            f"{error} codes)")

        # one reference-model process per sample, as many at a time as there are CPUs (it is single-threaded)
        with tempfile.TemporaryDirectory(prefix="hwact-tosa-run-") as work:
            with ThreadPoolExecutor(max_workers=min(len(samples), os.cpu_count() or 1)) as pool:
                for future in [pool.submit(check, index, Path(work)) for index in range(len(samples))]:
                    future.result()
        context.log(f"  TOSA reference model vs integer reference: bit-exact on {len(samples)} samples")
        return {"verified": True, "bit_exact": True, "samples": len(samples)}

    @classmethod
    def bench(cls, outdir: Path, request: BenchRequest) -> dict:
        """Vela's estimate for model.tosa in `outdir` on every built-in Ethos-U target (compiled afresh in a
        temporary folder, each with its target's system config and memory mode); nothing runs on an NPU."""
        from hwact.targets import load_target, target_names

        model = Path(outdir) / MODEL
        if not model.is_file() or model.stat().st_size == 0:
            raise InputError(f"{outdir}: no {MODEL} (not an Ethos-U convert folder)")
        rows = []
        with tempfile.TemporaryDirectory(prefix="hwact-vela-") as work:
            for name in target_names():
                options = load_target(name).backend_options.get(cls.name)
                if not options:
                    continue
                folder = Path(work) / name
                summary = tosa_tools.vela(model, folder, options["accelerator"], options["system_config"],
                                          options["memory_mode"])
                rows.append({"target": name, **estimate(summary, options),
                             "cpu_ops": _count(folder / "vela.log", "CPU operators")})
        return {"artifact": str(model), "kind": "estimate",
                "note": "Vela's static performance estimates per configuration, not measurements on an NPU",
                "vela": tosa_tools.vela_version(), "configurations": rows}


def estimate(summary: dict, options: dict) -> dict:
    """The figures of Vela's summary CSV row that the report and `hwact bench` show."""
    try:
        return {"accelerator": options["accelerator"], "system_config": options["system_config"],
                "memory_mode": options["memory_mode"],
                "npu_cycles": int(float(summary["cycles_npu"])), "total_cycles": int(float(summary["cycles_total"])),
                "estimated_inference_s": float(summary["inference_time"]),
                "estimated_inferences_per_s": float(summary["inferences_per_second"]),
                "macs": int(float(summary["nn_macs"])),
                "sram_kib": float(summary["sram_memory_used"]),
                "off_chip_flash_kib": float(summary["off_chip_flash_memory_used"]),
                "dram_kib": float(summary["dram_memory_used"]),
                "weights_bytes_encoded": int(float(summary["total_npu_encoded_weights"])),
                "estimate": "Vela's static performance estimate, not a measurement"}
    except (KeyError, ValueError) as exc:
        raise VerificationError(f"Vela's summary CSV lacks a number: {exc}") from None


def _count(log: Path, label: str) -> int:
    for line in log.read_text().splitlines():
        if line.strip().startswith(label):
            return int(line.split("=")[1].split("(")[0])
    raise VerificationError(f"{log}: Vela's summary has no '{label}' line")
