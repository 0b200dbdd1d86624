"""`hwact inspect`: what a model contains and what blocks it on each target."""

from __future__ import annotations

from hwact.ir import activations
from hwact.ir.summary import flops, op_census, param_count, weight_bytes
from hwact.load import Loaded
from hwact.passes.lowerable import lowering_advice
from hwact.report import table
from hwact.targets import load_target, target_names

_ONNX_ACTIVATIONS = {"Gelu", "Relu", "Erf", "Tanh", "Sigmoid", "LeakyRelu", "PRelu", "HardSigmoid", "HardSwish",
                     "Elu", "Selu", "Softplus", "Mish", "Clip"}


def inspect_loaded(loaded: Loaded) -> dict:
    info = {"input": loaded.describe()}
    if loaded.graph is None:
        return {**info, **_inspect_onnx(loaded)}
    graph = loaded.graph
    info.update({
        "parameters": param_count(graph),
        "weight_bytes": weight_bytes(graph),
        "flops_per_sample": flops(graph),
        "ops": op_census(graph),
        "activations": [s.describe() for s in activations.find_sites(graph)],
        "targets": {name: load_target(name).support_report(graph, lowering_advice) for name in target_names()},
    })
    return info


def _inspect_onnx(loaded: Loaded) -> dict:
    import onnx
    import numpy as np

    from hwact.backends.onnx import onnx_op_census

    model = onnx.load(str(loaded.onnx_path))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    sites = [{"node": n.name, "op": n.op_type, "form": n.op_type.lower(), "module": ""}
             for n in model.graph.node if n.op_type in _ONNX_ACTIVATIONS]
    return {"parameters": params, "flops_per_sample": None, "ops": onnx_op_census(loaded.onnx_path),
            "activations": sites, "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "targets": None}


def render_inspect(info: dict) -> str:
    src = info["input"]
    lines = [f"{src['path']}  ({src['format']})  inputs: " + ", ".join(f"{k} {v}" for k, v in src["input_shapes"].items())]
    flops_text = "n/a (ONNX)" if info["flops_per_sample"] is None else f"{info['flops_per_sample'] / 1e9:.3f} GFLOPs/sample"
    lines.append(f"parameters: {info['parameters']:,}   {flops_text}\n")
    lines.append("## Op census")
    lines.append(table([{"op": k, "count": v} for k, v in info["ops"].items()]))
    lines.append(f"## Activation sites ({len(info['activations'])})")
    lines.append(table(info["activations"], ["node", "op", "form", "module"]))
    if info.get("targets") is None:
        lines.append("Target support needs the PyTorch graph (give the checkpoint, not the ONNX file).")
        return "\n".join(lines)
    lines.append("## Targets")
    for name, support in info["targets"].items():
        status = "runs natively" if support["deployable"] else "blocked"
        lines.append(f"- {name}: {status}; native op types {len(support['native'])}, "
                     f"not native {len(support['not_native'])}")
        for op, entry in support["not_native"].items():
            lines.append(f"    {op} x{entry['count']}: {entry['reason']}  e.g. {', '.join(entry['nodes'][:2])}")
    return "\n".join(lines)
