"""Checkpoint intake: find out what a file is, load it safely, trace it to a Graph.

Formats (detected from the bytes, not the extension):
  * torch.export archive (.pt2): graph + weights + example inputs; preferred.
  * TorchScript archive: a program, so only with trust=True; converted to torch.export (needs --input-shape).
  * state_dict (.pt/.pth via torch.load(weights_only=True), or .safetensors) plus --arch NAME.
  * a pickled nn.Module: only with trust=True (unpickling runs code from the file).
  * .pt2 archives are read by hwact.safe_pt2, which refuses every route to running the file's code.
  * ONNX (.onnx): only for commands that need nothing but ONNX (bench, inspect).
  * zoo:NAME: a built-in zoo model with its seeded random weights.
  * a Hugging Face model folder (config.json + model.safetensors): hwact.hf_folder, needs `hwact[hf]`.
Every failure a user can cause raises InputError naming the file and the cause; nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils._pytree as pytree

from hwact import models
from hwact.errors import InputError
from hwact.ir.graph import Graph, InputSpec, first_line, from_exported, trace
from hwact.ir.ops import load_all_ops
from hwact.safe_pt2 import ZIP_ERRORS, load_exported

_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "int64": torch.int64,
           "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}


@dataclass
class Loaded:
    source: str
    format: str
    sha256: str | None
    inputs: list[InputSpec]
    graph: Graph | None = None           # None only for ONNX files
    module: torch.nn.Module | None = None  # the eager module when there is one (zoo, state_dict, pickle)
    onnx_path: Path | None = None

    def describe(self) -> dict:
        return {"path": self.source, "format": self.format, "sha256": self.sha256,
                "input_shapes": {s.name: s.describe() for s in self.inputs}}


@contextlib.contextmanager
def quiet_torch():
    """Silence torch's warnings and log lines (the user gets hwact's one-line error instead)."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


def parse_input_shape(text: str, index: int = 0) -> InputSpec:
    """'1x3x224x224' or '1x128:int64' (optionally 'name=1x128:int64')."""
    match = re.fullmatch(r"(?:([A-Za-z_]\w*)=)?(\d+(?:x\d+)*)(?::(\w+))?", text.strip())
    if not match:
        raise InputError(f"bad --input-shape '{text}'", hint="write it like 1x3x224x224 or 1x128:int64")
    name, dims, dtype = match.groups()
    shape = tuple(int(d) for d in dims.split("x"))
    if any(d <= 0 for d in shape):
        raise InputError(f"bad --input-shape '{text}': every dimension must be positive")
    if dtype and dtype not in _DTYPES:
        raise InputError(f"bad --input-shape '{text}': unknown dtype '{dtype}'", hint="one of " + ", ".join(_DTYPES))
    torch_dtype = _DTYPES[dtype or "float32"]
    return InputSpec(name or ("x" if index == 0 else f"x{index}"), shape, torch_dtype,
                     None if torch_dtype.is_floating_point else 2)


def load(source: str, arch: str | None = None, input_shapes: tuple[str, ...] = (), trust: bool = False,
         allow_onnx: bool = False) -> Loaded:
    load_all_ops()
    shapes = [parse_input_shape(s, i) for i, s in enumerate(input_shapes)]
    if source.startswith("zoo:"):
        module, specs = models.build(source[4:])
        return _from_module(module, shapes or specs, source, "zoo", None)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: no such file", hint="give a checkpoint path or zoo:NAME (see `hwact inspect --help`)")
    if path.is_dir():
        from hwact import hf_folder

        if hf_folder.is_model_folder(path):
            return hf_folder.load_folder(path, input_shapes, trust)
        raise InputError(f"{source}: is a directory, not a checkpoint file",
                         hint=f"a Hugging Face model folder holds {hf_folder.CONFIG}")
    if not path.is_file():  # a FIFO or device would block or never end
        raise InputError(f"{source}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{source}: empty file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    kind = detect_format(path)
    if kind == "onnx":
        if not allow_onnx:
            raise InputError(f"{source}: an ONNX file can only be inspected or benchmarked",
                             hint="convert/export need the PyTorch checkpoint (.pt2, TorchScript or state_dict)")
        return _load_onnx(path, digest)
    if kind == "pt2":
        return _load_pt2(path, data, digest, shapes, trust)
    if kind == "torchscript":
        return _load_torchscript(path, digest, shapes, trust)
    if kind == "safetensors":
        return _load_state_dict(path, digest, _read_safetensors(path), arch, shapes, "safetensors")
    return _load_torch_pickle(path, digest, arch, shapes, trust)


def detect_format(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(path).namelist()
        except ZIP_ERRORS as exc:
            raise InputError(f"{path}: truncated or corrupt zip archive ({first_line(exc)})") from exc
        if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
            return "pt2"
        if any("/code/" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-pickle"
        raise InputError(f"{path}: a zip archive that is neither a torch.export, TorchScript nor torch.save file")
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < 100 * 2**20:  # a JSON header of plausible size: safetensors (maybe truncated)
            return "safetensors"
    if head[:1] == b"\x80":
        return "torch-pickle"
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(path):
        return "onnx"
    raise InputError(f"{path}: unrecognized checkpoint format",
                     hint="expected .pt2 (torch.export), TorchScript, a state_dict (.pt/.pth/.safetensors) or .onnx")


def _looks_like_onnx(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return len(model.graph.node) > 0


def _load_pt2(path: Path, data: bytes, digest: str, shapes: list[InputSpec], trust: bool) -> Loaded:
    with quiet_torch():  # torch.export.load logs a traceback before it raises
        ep = load_exported(data, str(path), trust)
    names, example = flat_call(ep, str(path))
    if not shapes:
        if example is None:
            raise InputError(f"{path}: the archive has no example inputs", hint="pass --input-shape")
        shapes = [_spec_from_tensor(name, t) for name, t in zip(names, example)]
    else:
        if len(shapes) != len(names):
            raise InputError(f"{path}: {len(shapes)} --input-shape values for a model with {len(names)} inputs "
                             f"({', '.join(names)})")
        shapes = [InputSpec(n, s.shape, s.dtype, s.high) for n, s in zip(names, shapes)]
    graph = from_exported(ep, shapes)
    if graph.fixed_batch and any(s.shape and s.shape[0] != graph.fixed_batch for s in shapes):
        raise InputError(f"{path}: exported with a fixed batch of {graph.fixed_batch}, not "
                         f"{', '.join(s.describe() for s in shapes)}",
                         hint="export with dynamic_shapes for a dynamic batch, or give that batch")
    _check_runs(graph, str(path))
    return Loaded(str(path), "pt2", digest, shapes, graph, graph.module)


def flat_call(ep: torch.export.ExportedProgram, source: str) -> tuple[list[str], tuple | None]:
    """Make `ep` a program called with positional tensors that returns what hwact converts; returns the
    input names and the flat example inputs (None when the archive has none).

    Inputs: the user inputs in the order of the call's in_spec, positional args then keyword args (a
    program exported with `kwargs={"input_ids": ..., "attention_mask": ...}` becomes
    `forward(input_ids, attention_mask)`), each named as the graph signature names it (the forward's
    parameter or keyword name), which is also the name of its calibration array in --calib.
    Output: a tensor, or a tuple/list of tensors, is kept as it is. Any other output (a dict, a Hugging
    Face ModelOutput read as a dict of its fields by hwact.safe_pt2.read_treespec, nested containers)
    becomes one tensor: the leaf of the top-level field `logits` when there is one, else the first leaf
    (a base model's last_hidden_state)."""
    from torch.export.graph_signature import InputKind, OutputKind, TensorArgument

    user = [s for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    names = [s.arg.name for s in user]
    if any(not isinstance(s.arg, TensorArgument) for s in user):
        odd = next(s.arg.name for s in user if not isinstance(s.arg, TensorArgument))
        raise InputError(f"{source}: input '{odd}' is not a tensor (exported as a constant or a symbolic int); "
                         "hwact converts models whose inputs are all tensors",
                         hint="re-export with tensor inputs only")
    signature = ep.module_call_graph[0].signature
    in_spec, out_spec = ep.call_spec.in_spec, ep.call_spec.out_spec
    example = None
    if ep.example_inputs:
        args, kwargs = ep.example_inputs
        example = tuple(pytree.tree_leaves((args, {k: kwargs[k] for k in _kwarg_order(in_spec, kwargs)})))
        if len(example) != len(names) or not all(isinstance(t, torch.Tensor) for t in example):
            example = None
    positional = pytree.tree_structure(((0,) * len(names), {}))
    if signature is None or in_spec is None or in_spec.num_leaves != len(names):
        raise InputError(f"{source}: the archive's call signature does not match its {len(names)} inputs")
    if in_spec != positional:
        signature.in_spec, signature.forward_arg_names = positional, list(names)
        ep._example_inputs = (example, {}) if example is not None else None
    if out_spec is not None and _needs_one_output(out_spec):
        _keep_one_output(ep, _output_leaf(out_spec), OutputKind)
        signature.out_spec = pytree.tree_structure(0)
    return names, example


def _kwarg_order(in_spec, kwargs: dict) -> list:
    """The keyword names in the order the in_spec flattens them (the order they were exported in)."""
    spec = in_spec.child(1) if in_spec is not None and in_spec.num_children == 2 else None
    order = list(spec.context) if spec is not None and spec.type is dict else []
    return order if set(order) == set(kwargs) else list(kwargs)


def _needs_one_output(spec) -> bool:
    """False for a tensor or a flat tuple/list of tensors (kept as they are), True for anything else."""
    if spec.is_leaf():
        return False
    return not (spec.type in (tuple, list) and all(child.is_leaf() for child in spec.children()))


def _output_leaf(spec) -> int:
    """Index among the flat outputs of the top-level `logits` field's first leaf, else 0."""
    if spec.type is dict and "logits" in spec.context:
        index = list(spec.context).index("logits")
        return sum(child.num_leaves for child in spec.children()[:index])
    return 0


def _keep_one_output(ep: torch.export.ExportedProgram, index: int, OutputKind) -> None:
    """Make the graph return only its `index`-th user output (buffer mutations stay as they are)."""
    output = ep.graph.output_node()
    values = list(output.args[0])
    specs = ep.graph_signature.output_specs
    user = [i for i, s in enumerate(specs) if s.kind == OutputKind.USER_OUTPUT]
    keep = [i for i, s in enumerate(specs) if s.kind != OutputKind.USER_OUTPUT] + [user[index]]
    output.args = (tuple(values[i] for i in keep),)
    specs[:] = [specs[i] for i in keep]
    ep.graph.eliminate_dead_code()
    ep.graph_module.recompile()


def _spec_from_tensor(name: str, tensor: torch.Tensor) -> InputSpec:
    high = None if tensor.dtype.is_floating_point else int(tensor.max().item()) + 1 if tensor.numel() else 2
    return InputSpec(name, tuple(tensor.shape), tensor.dtype, high)


def _load_torchscript(path: Path, digest: str, shapes: list[InputSpec], trust: bool) -> Loaded:
    if not trust:  # its code/ folder is a program that TorchScript's interpreter runs while converting
        raise InputError(f"{path}: a TorchScript archive is a program (its forward runs in TorchScript's "
                         "interpreter), so it is refused", hint="export a .pt2 with torch.export instead, or pass "
                         "--trust-checkpoint if you trust this file")
    if not shapes:
        raise InputError(f"{path}: TorchScript archives carry no input shapes", hint="pass --input-shape, e.g. 1x3x224x224")
    try:
        with quiet_torch():  # deprecation warnings and converter logs on every TorchScript load
            scripted = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise InputError(f"{path}: corrupt or truncated TorchScript archive ({first_line(exc)})") from exc
    from torch._export.converter import TS2EPConverter

    args = tuple(s.random(shapes[0].shape[0], torch.Generator().manual_seed(0)) for s in shapes)
    try:
        with quiet_torch():
            ep = TS2EPConverter(scripted, args).convert()
    except Exception as exc:
        raise InputError(f"{path}: the TorchScript model could not be converted to torch.export with inputs "
                         f"{', '.join(s.describe() for s in shapes)} ({first_line(exc)})") from exc
    graph = from_exported(ep, shapes)
    _check_runs(graph, str(path))
    return Loaded(str(path), "torchscript", digest, shapes, graph, graph.module)


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise InputError(f"{path}: corrupt or truncated safetensors file ({first_line(exc)})") from exc


def _load_torch_pickle(path: Path, digest: str, arch: str | None, shapes: list[InputSpec], trust: bool) -> Loaded:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names weights_only in every unpickling error; only "Unsupported global" means objects
        if "unsupported global" not in str(exc).lower():
            raise InputError(f"{path}: corrupt or truncated torch.save file ({_unpickler_cause(exc)})") from exc
        if not trust:
            raise InputError(f"{path}: holds pickled Python objects (a full nn.Module?); unpickling runs code from "
                             "the file, so it is refused", hint="save a state_dict or .pt2 instead, or pass "
                             "--trust-checkpoint if you trust this file") from exc
        return _load_trusted_module(path, digest, shapes)
    except Exception as exc:
        raise InputError(f"{path}: corrupt or truncated torch.save file ({first_line(exc)})") from exc
    return _load_state_dict(path, digest, _unwrap_state_dict(obj, path), arch, shapes, "state_dict")


def _unpickler_cause(exc: Exception) -> str:
    """The line after torch's 'WeightsUnpickler error:' (its own first line is boilerplate)."""
    text = str(exc)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    cause = next((line.strip() for line in rest.splitlines() if line.strip()), "") if marker else ""
    return cause[:200] or first_line(exc)


def _load_trusted_module(path: Path, digest: str, shapes: list[InputSpec]) -> Loaded:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"{path}: could not unpickle ({first_line(exc)})") from exc
    if isinstance(obj, dict):
        raise InputError(f"{path}: holds a dict with pickled objects, not an nn.Module",
                         hint="save a plain state_dict (tensors only) and pass --arch")
    if not isinstance(obj, torch.nn.Module):
        raise InputError(f"{path}: holds a {type(obj).__name__}, not an nn.Module")
    if not shapes:
        raise InputError(f"{path}: a pickled module carries no input shapes", hint="pass --input-shape")
    return _from_module(obj, shapes, str(path), "pickled-module", digest)


def _unwrap_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state_dict (expected a dict of name -> tensor)")
    return obj


def _load_state_dict(path: Path, digest: str, state: dict, arch: str | None, shapes: list[InputSpec],
                     fmt: str) -> Loaded:
    if not arch:
        raise InputError(f"{path}: a state_dict holds weights only", hint="name its architecture with --arch "
                         "(one of " + ", ".join(models.names()) + ")")
    if arch not in models.ZOO:
        raise InputError(f"{path}: unknown architecture '{arch}'", hint="known: " + ", ".join(models.names()))
    module, specs = models.build(arch)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    # load_state_dict would silently cast int64/bool/complex values into float weights
    kinds = sorted(k for k in set(expected) & set(state) if _number_kind(expected[k]) != _number_kind(state[k]))
    if missing or unexpected or mismatched or kinds:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} with wrong shape (e.g. {k}: {tuple(state[k].shape)} vs "
                         f"{tuple(expected[k].shape)})")
        if kinds:
            k = kinds[0]
            parts.append(f"{len(kinds)} with the wrong kind of number (e.g. {k}: {state[k].dtype} vs "
                         f"{expected[k].dtype})")
        raise InputError(f"{path}: state_dict keys do not match --arch {arch}: " + "; ".join(parts))
    module.load_state_dict(state)
    return _from_module(module, shapes or specs, str(path), fmt, digest)


def _number_kind(tensor: torch.Tensor) -> str:
    return "complex" if tensor.is_complex() else "float" if tensor.is_floating_point() else "integer"


def _from_module(module: torch.nn.Module, shapes: list[InputSpec], source: str, fmt: str, digest) -> Loaded:
    module = module.eval()
    with quiet_torch():  # torch.export logs pages of context before it raises on a shape that does not fit
        graph = trace(module, shapes, source)
    _check_runs(graph, source)
    return Loaded(source, fmt, digest, shapes, graph, module)


def _check_runs(graph: Graph, source: str) -> None:
    try:
        graph(*graph.example_inputs(batch=graph.inputs[0].shape[0]))
    except Exception as exc:
        raise InputError(f"{source}: the model rejects inputs {', '.join(s.describe() for s in graph.inputs)} "
                         f"({first_line(exc)})", hint="check --input-shape") from exc


def _load_onnx(path: Path, digest: str) -> Loaded:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InputError(f"{path}: corrupt or invalid ONNX file ({first_line(exc)})") from exc
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = tuple(d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim)
        elem_type = value.type.tensor_type.elem_type
        try:  # string, bfloat16 and float8 inputs have no torch tensor from numpy
            dtype = torch.from_numpy(__import__("numpy").zeros(1, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem_type))).dtype
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: input '{value.name}' has unsupported type "
                             f"{onnx.TensorProto.DataType.Name(elem_type).lower()}") from exc
        specs.append(InputSpec(value.name, dims, dtype, None if dtype.is_floating_point else 2))
    return Loaded(str(path), "onnx", digest, specs, None, None, path)


def read_json(path: Path, expected: type = dict):
    """The JSON document in `path`, which must be of type `expected` (an object by default)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable JSON ({first_line(exc)})") from exc
    if not isinstance(value, expected):
        kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
                 type(None): "null"}
        raise InputError(f"{path}: holds a JSON {kinds[type(value)]} where a JSON {kinds[expected]} is expected",
                         hint="the file was not written by hwact, or was edited")
    return value
