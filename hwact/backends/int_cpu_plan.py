"""The plan of the integer CPU runtime: an integer graph written as data, and read back as hostile input.

A plan is the list of the graph's steps in order, in plan.json, with its constants (weights, biases,
tables) in constants.npz:

    {"format": "hwact-int-cpu-plan", "version": 1,
     "inputs": ["pixel_values"], "outputs": ["dequantize_7"],
     "steps": [{"name": "linear_3", "op": "hwact.int_linear.default",
                "args": [{"ref": "layer_norm_q"}, {"const": "linear_3_wq"}, ..., false, -128, 127],
                "kwargs": {}, "out_type": "int8"}, ...]}

An argument is a reference to an earlier step or input ({"ref": name}), a constant ({"const": key}), a
dtype / device ({"dtype": "int64"}, {"device": "cpu"}), a list, or a JSON number / bool / string / null.
`read_plan` checks everything before anything runs: the format, every op against the fixed table of ops
the runtime executes (hwact ops by their kernels, a short list of aten/operator ops on indices and
masks by torch), every reference against the steps before it, every constant against constants.npz
(read with hwact.npz's safe reader: no pickles). A plan never names code to import.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.fx

from hwact.errors import InputError, UnsupportedError
from hwact.ir.graph import Graph, op_name
from hwact.ir.ops import OP_SPECS, load_all_ops, output_bounds
from hwact.npz import ANY, load_arrays

FORMAT, VERSION = "hwact-int-cpu-plan", 1
aten = torch.ops.aten

# ops the runtime runs with torch: layout, index arithmetic and masks (no float compute reaches here)
TORCH_OPS = {op_name_: op for op_name_, op in (
    (str(op), op) for op in (
        aten.reshape.default, aten.view.default, aten.permute.default, aten.transpose.int, aten.select.int,
        aten.slice.Tensor, aten.flatten.using_ints, aten.expand.default, aten.unsqueeze.default,
        aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.contiguous.default, aten.clone.default,
        aten.t.default, aten.roll.default, aten._unsafe_view.default, aten.alias.default, aten.detach.default,
        aten.cat.default, aten.clamp.default, aten.constant_pad_nd.default, aten.sum.dim_IntList, aten.neg.default,
        aten.sym_size.int, aten.arange.default, aten.arange.start, aten.arange.start_step, aten.__and__.Tensor,
        aten.__or__.Tensor, aten.index.Tensor, aten.to.device, aten.to.dtype, aten.to.dtype_layout,
        aten._to_copy.default, aten.ge.Scalar, aten.gt.Scalar, aten.le.Scalar, aten.lt.Scalar, aten.eq.Scalar,
        aten.ge.Tensor, aten.gt.Tensor, aten.le.Tensor, aten.lt.Tensor, aten.eq.Tensor, aten.logical_not.default,
        aten.new_ones.default, aten.ones.default, aten.zeros.default, aten.full.default, aten.where.self,
        aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.gather.default))}
OPERATORS = {"operator.mul": operator.mul, "operator.add": operator.add, "operator.sub": operator.sub,
             "operator.floordiv": operator.floordiv, "operator.getitem": operator.getitem}


def kernel_ops() -> dict:
    """Every hwact op by name (the runtime says which it has kernels for)."""
    load_all_ops()
    return {str(op): op for op in OP_SPECS}

DTYPES = {"bool": torch.bool, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32,
          "int64": torch.int64, "float32": torch.float32}
STORAGE = ("int8", "uint8", "int16", "int32", "float32", "other")


@dataclass
class Step:
    name: str
    op: object
    op_name: str
    args: list
    kwargs: dict
    out_type: str


@dataclass
class Plan:
    inputs: list[str]
    outputs: list[str]
    steps: list[Step]
    constants: dict[str, np.ndarray]


def storage_type(bounds: tuple[int, int] | None) -> str:
    """The narrowest array type that holds codes in `bounds`."""
    if bounds is None:
        return "other"
    low, high = bounds
    for name, (lo, hi) in (("int8", (-128, 127)), ("uint8", (0, 255)), ("int16", (-32768, 32767))):
        if lo <= low and high <= hi:
            return name
    return "int32"


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    for name, function in OPERATORS.items():
        if target is function:
            return name
    raise UnsupportedError(f"the integer CPU runtime cannot run {target}")


def _encode(value, constants: dict):
    if isinstance(value, torch.fx.Node):
        return {"const": value.target} if value.op == "get_attr" else {"ref": value.name}
    if isinstance(value, (list, tuple)):
        return [_encode(v, constants) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": "strided"}
    if isinstance(value, float) and not math.isfinite(value):
        raise UnsupportedError(f"the integer CPU runtime cannot hold the number {value}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UnsupportedError(f"the integer CPU runtime cannot hold an argument of type {type(value).__name__}")


def unsupported(graph: Graph) -> list[str]:
    """One line per node the runtime cannot run (its op is in neither table)."""
    problems, kernels = [], kernel_ops()
    for node in graph.call_nodes():
        try:
            name = _target_name(node.target)
        except UnsupportedError:
            name = None
        if name is None or (name not in TORCH_OPS and name not in kernels and name not in OPERATORS):
            problems.append(f"{node.name} ({op_name(node)}): the integer CPU runtime has no kernel for this op")
    return problems


def make_plan(graph: Graph) -> Plan:
    """The plan of an integer graph (check `unsupported` first)."""
    constants, steps, types = {}, [], {}
    for node in graph.fx.nodes:
        if node.op == "get_attr":
            value = graph.module
            for part in node.target.split("."):
                value = getattr(value, part)
            constants[node.target] = value.detach().cpu().numpy()
        elif node.op == "call_function":
            name = _target_name(node.target)
            if node.target in OP_SPECS:
                spec = OP_SPECS[node.target]
                if spec.codes_of:
                    source = node.args[spec.names.index(spec.codes_of)]
                    out_type = types.get(source.name if isinstance(source, torch.fx.Node) else "", "other")
                elif spec.bounds is not None:
                    out_type = storage_type(output_bounds(node))
                else:
                    out_type = "float32"
            else:
                sources = [types.get(a.name, "other") for a in node.all_input_nodes]
                out_type = _widest(sources) if sources else "other"
                if node.target is aten.neg.default and out_type in ("int8", "uint8"):
                    out_type = "int16"          # -(-128) = 128, -(255) = -255
                elif node.target is aten.sum.dim_IntList and out_type in STORAGE[:4]:
                    out_type = "int32"          # a sum of codes (fold-quant-scales' mean), requantized next
            types[node.name] = out_type
            steps.append(Step(node.name, node.target, name, _encode(node.args, constants),
                              {key: _encode(value, constants) for key, value in node.kwargs.items()}, out_type))
    inputs = [n.name for n in graph.fx.nodes if n.op == "placeholder"]
    output = next(n for n in graph.fx.nodes if n.op == "output")
    outputs = [a.name for a in torch.utils._pytree.tree_leaves(output.args) if isinstance(a, torch.fx.Node)]
    return Plan(inputs, outputs, steps, constants)


def _widest(types: list[str]) -> str:
    """The storage type that holds every code of `types` (int8 with uint8 needs int16)."""
    codes = {t for t in types if t in STORAGE[:4]}
    if not codes:
        return types[0]
    if "int32" in codes:
        return "int32"
    if "int16" in codes or codes == {"int8", "uint8"}:
        return "int16"
    return codes.pop()


def write_plan(plan: Plan, outdir: Path) -> list[str]:
    body = {"format": FORMAT, "version": VERSION, "inputs": plan.inputs, "outputs": plan.outputs,
            "steps": [{"name": s.name, "op": s.op_name, "args": s.args, "kwargs": s.kwargs, "out_type": s.out_type}
                      for s in plan.steps]}
    (outdir / "plan.json").write_text(json.dumps(body, allow_nan=False))
    np.savez(outdir / "constants.npz", **plan.constants)
    return ["plan.json", "constants.npz"]


def read_plan(outdir: Path) -> Plan:
    """The plan in `outdir`, every part checked (module docstring); InputError naming what is wrong."""
    path = Path(outdir) / "plan.json"
    try:
        body = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable plan ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("version") != VERSION:
        raise InputError(f"{path}: not an hwact integer CPU plan (version {VERSION})")
    constants = load_arrays(Path(outdir) / "constants.npz", ANY)
    inputs = _strings(body.get("inputs"), path, "inputs")
    known = set(inputs)
    steps, kernels = [], kernel_ops()
    for index, raw in enumerate(body.get("steps") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InputError(f"{path}: step {index} is malformed")
        name, op = raw["name"], raw.get("op")
        target = kernels.get(op) or TORCH_OPS.get(op) or OPERATORS.get(op)
        if target is None:
            raise InputError(f"{path}: step {name} names op {op!r}, which the runtime does not run")
        if raw.get("out_type") not in STORAGE:
            raise InputError(f"{path}: step {name} has out_type {raw.get('out_type')!r}")
        args, kwargs = raw.get("args", []), raw.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise InputError(f"{path}: step {name} is malformed")
        args = _decode(args, known, constants, path, name)
        kwargs = {str(k): _decode(v, known, constants, path, name) for k, v in kwargs.items()}
        steps.append(Step(name, target, op, args, kwargs, raw["out_type"]))
        known.add(name)
    outputs = _strings(body.get("outputs"), path, "outputs")
    if not outputs or any(o not in known for o in outputs):
        raise InputError(f"{path}: outputs {outputs} are not steps of the plan")
    return Plan(inputs, outputs, steps, constants)


def _strings(value, path, what) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{path}: '{what}' must be a list of names")
    return value


class Ref(str):
    """A reference to an earlier value of the plan."""


class Const(str):
    """A key of constants.npz."""


def _decode(value, known: set, constants: dict, path, step: str):
    if isinstance(value, dict) and len(value) == 1:
        (kind, item), = value.items()
        if kind == "ref" and item in known:
            return Ref(item)
        if kind == "const" and item in constants:
            return Const(item)
        if kind == "dtype" and item in DTYPES:
            return DTYPES[item]
        if kind == "device" and item == "cpu":
            return torch.device("cpu")
        if kind == "layout" and item == "strided":
            return torch.strided
    if isinstance(value, list):
        return [_decode(v, known, constants, path, step) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise InputError(f"{path}: step {step} has an argument the runtime cannot read: {str(value)[:80]}")
