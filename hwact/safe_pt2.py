"""Reading a torch.export archive (.pt2) someone else wrote, without running their code.

`torch.export.load` (torch 2.13) runs code from the archive along five routes:
  1. full pickle: the sample inputs (tried with weights_only=True, then a silent fallback to full
     pickle), legacy `data/weights/<model>.pt` / `data/constants/<model>.pt` files (the same fallback),
     weights and constants marked `"use_pickle": true`, torchbind objects and opaque objects;
  2. native code: an AOTInductor package (`data/aotinductor/...`) is dlopened;
  3. eval: every symbolic shape expression (`expr_str`) goes through `sympy.sympify`, which evals it;
  4. exec: the archive's `guards_code` becomes Python source that `ExportedProgram.module()` execs;
  5. attribute chains: a node target "torch.X.Y" resolves to anything reachable from the torch
     module (`torch.os.system`), and "_operator.attrgetter" reaches anything from a tensor.
Without --trust-checkpoint, `load_exported` closes every route: `check_archive` reads the zip
directory and the JSON members before torch sees a byte and refuses (InputError naming the member)
native code, pickled payloads, expressions that are not plain sympy constructor calls, and targets
outside aten/prims/hwact ops, higher-order ops and a short list of arithmetic builtins; torch then
loads the bytes already read (no second read of a file that may change) while any full unpickle is
refused, the guards code is dropped, and every node of the loaded graph is checked again by object.

Pytree specs (the call's in_spec/out_spec) are read by hwact's own reader, trusted or not (`read_treespec`):
torch's resolves each node's type by the name the file gives (a Hugging Face `ModelOutput` is unknown unless
transformers was imported first) and parses contexts with a JSON hook that imports any module named under
"__enum__". hwact keeps tuple, list and dict nodes and reads every other node as a plain container of its
leaves (see `read_treespec`); nothing is imported. Errors are torch's own cause, never "see the warnings
above" (which hwact silences).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import operator
import pickle
import re
import zipfile
import zlib
from pathlib import PurePosixPath

import torch
import torch.utils._pytree as pytree
from torch.export.pt2_archive import constants as pt2

from hwact.errors import InputError
from hwact.ir.graph import first_line

# what Python's zipfile raises on a damaged archive (bad CRC, names, versions, extra fields, streams)
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError,
              UnicodeDecodeError, RuntimeError)
TRUST_HINT = "re-export it with torch.export.save from plain tensors, or pass --trust-checkpoint if you trust this file"
# torch.export.save stores members uncompressed; a member that inflates far beyond the file is a zip bomb
MAX_INFLATION = 4
OP_NAMESPACES = ("aten", "prims", "hwact")
SYMBOLIC_OPS = {getattr(operator, name) for name in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne", "lt", "le", "gt",
    "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "getitem")}
SYMBOLIC_OPS |= {torch.sym_int, torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_not,
                 torch.sym_sqrt, torch.sym_sum}
SYMBOLIC_OPS |= {getattr(math, name) for name in ("ceil", "floor", "trunc", "sqrt", "exp", "log", "log2", "sin",
                                                 "cos", "tan", "tanh", "atan", "asin", "acos", "sinh", "cosh")}
_SYMBOLIC_OP_NAMES = {f"{'_operator' if f.__module__ in ('_operator', 'operator') else f.__module__}.{f.__name__}"
                      for f in SYMBOLIC_OPS}
# sympy constructors torch writes into expr_str (sympy.srepr form) and the keywords they take
SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le",
    "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "And",
    "Or", "Not", "true", "false", "BooleanTrue", "BooleanFalse", "Zero", "One", "NegativeOne", "Half", "Infinity",
    "NegativeInfinity", "oo", "FloorDiv", "CeilDiv", "CleanDiv", "ModularIndexing", "PythonMod", "IntTrueDiv",
    "FloatTrueDiv", "ToFloat", "TruncToInt", "TruncToFloat", "FloorToInt", "CeilToInt", "RoundToInt",
    "RoundDecimal", "PowByNatural", "FloatPow", "Identity", "Where", "LShift", "RShift", "sqrt", "floor", "ceiling",
    "IsNonOverlappingAndDenseIndicator", "True", "False"}
SYMPY_KEYWORDS = {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "infinite",
                  "zero", "nonzero", "even", "odd", "commutative", "precision", "evaluate"}
_POWERS = {"Pow", "PowByNatural", "FloatPow"}
_MAX_EXPONENT = 64          # sympy evaluates integer powers eagerly: 2**(2**60) would never return
_MAX_EXPR_CHARS = 10_000
_SYMBOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def load_exported(data: bytes, source: str, trust: bool) -> torch.export.ExportedProgram:
    """The ExportedProgram in `data` (the bytes of the .pt2 file `source`); see the module docstring."""
    if not trust:
        check_archive(data, source)
    # torch.export.load logs the cause of a failure and raises "check the warnings above": load_pt2 raises it
    from torch.export.pt2_archive._package import load_pt2

    try:
        with contextlib.nullcontext() if trust else _no_full_unpickling(), _own_treespec_reader():
            programs = load_pt2(io.BytesIO(data)).exported_programs
    except _RefusedPickle as exc:
        raise InputError(f"{source}: a member of the archive needs full pickle to load ({exc}); unpickling runs "
                         "code from the file, so it is refused", hint=TRUST_HINT) from None
    except InputError as exc:
        raise InputError(f"{source}: {exc.message}", hint=exc.hint) from None
    except Exception as exc:
        raise InputError(f"{source}: corrupt or truncated .pt2 archive ({type(exc).__name__}: "
                         f"{first_line(exc)})") from exc
    ep = programs.get("model")
    if ep is None:
        raise InputError(f"{source}: the archive holds no exported program named 'model' "
                         f"({', '.join(programs) or 'none at all'})", hint="save it with torch.export.save")
    if not trust:
        ep._guards_code = []  # exec'd by ep.module(); hwact drops the guard call anyway (ir.graph)
        check_graph(ep, source)
    return ep


# ---------------------------------------------------------------------------------------------- archive
def check_archive(data: bytes, source: str) -> None:
    """Refuse, naming the member, anything in the archive that would run code when torch loads it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
        damaged = archive.testzip()   # torch's reader checks no CRC: a flipped weight byte would load
    except ZIP_ERRORS as exc:
        raise InputError(f"{source}: truncated or corrupt zip archive ({first_line(exc)})") from exc
    if damaged is not None:
        raise InputError(f"{source}: member {damaged} is corrupt (its CRC does not match)")
    declared = sum(m.file_size for m in members)
    if declared > MAX_INFLATION * len(data) + 2**20:
        raise InputError(f"{source}: its members claim {declared / 2**20:.0f} MiB, {declared / len(data):.0f}x the "
                         "file's size (a zip bomb?); torch.export.save stores members uncompressed")
    files = _inner_names(members, source)
    for inner, name in files.items():
        if inner.startswith((pt2.AOTINDUCTOR_DIR, pt2.EXECUTORCH_DIR, pt2.MTIA_DIR)):
            raise InputError(f"{source}: member {name} is a compiled (native) package; loading it runs code from "
                             "the file, so it is refused", hint=TRUST_HINT)
        if inner.startswith(pt2.SAMPLE_INPUTS_DIR) or (  # sample inputs and legacy weight files are pickles
                inner.startswith((pt2.WEIGHTS_DIR, pt2.CONSTANTS_DIR)) and inner.endswith(".pt")):
            _check_weights_only(archive.read(name), source, name)
        if inner.startswith(pt2.MODELS_DIR) and inner.endswith(".json"):
            model = inner[len(pt2.MODELS_DIR):-len(".json")]
            for config in (pt2.WEIGHTS_CONFIG_FILENAME_FORMAT, pt2.CONSTANTS_CONFIG_FILENAME_FORMAT):
                _check_payload_config(archive, files, config.format(model), source)
            _check_program(_read_json(archive, name, source), source, name)


def _inner_names(members: list[zipfile.ZipInfo], source: str) -> dict[str, str]:
    """{'data/weights/w0': 'archive/data/weights/w0'}: torch reads every member below one root folder.

    Two members with one name, or members under different roots, could be read differently by Python's
    zipfile (this check) and torch's own zip reader (the load): refused."""
    roots = {PurePosixPath(m.filename).parts[0] for m in members if PurePosixPath(m.filename).parts}
    names = [m.filename for m in members]
    if len(roots) != 1 or len(set(names)) != len(names):
        raise InputError(f"{source}: not a torch.export archive (members under {len(roots)} root folders, "
                         f"{len(names) - len(set(names))} duplicate names)")
    return {"/".join(PurePosixPath(n).parts[1:]): n for n in names}


def _read_json(archive: zipfile.ZipFile, name: str, source: str):
    try:
        return json.loads(archive.read(name))
    except (RecursionError, *ZIP_ERRORS) as exc:
        raise InputError(f"{source}: member {name} is not valid JSON ({first_line(exc)})") from exc


def _check_weights_only(payload: bytes, source: str, name: str) -> None:
    try:
        torch.load(io.BytesIO(payload), weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{source}: member {name} holds pickled Python objects (it loads only with full pickle, "
                         "which runs code from the file), so it is refused", hint=TRUST_HINT) from exc
    except Exception as exc:
        raise InputError(f"{source}: member {name} is corrupt ({first_line(exc)})") from exc


def _check_payload_config(archive: zipfile.ZipFile, files: dict, inner: str, source: str) -> None:
    """Weights and constants must be raw tensor payloads, never pickles, torchbind or opaque objects."""
    name = files.get(inner)
    if name is None:
        return  # torch reports a missing config as a corrupt archive
    config = _read_json(archive, name, source)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{source}: member {name} is not a payload config (no 'config' object)")
    for fqn, entry in entries.items():
        path = entry.get("path_name", "") if isinstance(entry, dict) else ""
        if not isinstance(entry, dict) or entry.get("use_pickle") or not str(path).startswith(
                (pt2.WEIGHT_FILENAME_PREFIX, pt2.TENSOR_CONSTANT_FILENAME_PREFIX)):
            raise InputError(f"{source}: member {name} marks '{fqn}' as a pickled object ({path or 'no path'}); "
                             "unpickling runs code from the file, so it is refused", hint=TRUST_HINT)
        record = files.get(f"{inner.rsplit('/', 1)[0]}/{path}")
        sizes = (entry.get("tensor_meta") or {}).get("sizes") or []
        numel = math.prod(s.get("as_int", 0) if isinstance(s, dict) else 0 for s in sizes)
        if record is not None and archive.getinfo(record).file_size == 0 and numel > 0:
            raise InputError(f"{source}: '{fqn}' claims {numel} elements with an empty payload {record}")


# ---------------------------------------------------------------------------------------------- program
def _check_program(program, source: str, name: str) -> None:
    """Walk the serialized program: operator names and symbolic expressions must be plain data."""
    for key, value in _items(program):
        if key in ("target", "as_operator") and isinstance(value, str):
            if not _allowed_operator_name(value):
                raise InputError(f"{source}: member {name} calls '{value[:80]}', which is not an aten/prims/hwact "
                                 "op or an arithmetic builtin; refused", hint=TRUST_HINT)
        elif key == "expr_str" and isinstance(value, str):
            reason = sympy_expression_problem(value)
            if reason:
                raise InputError(f"{source}: member {name} has a shape expression that is not plain sympy "
                                 f"({reason}): '{value[:80]}'", hint=TRUST_HINT)


def _items(node, depth: int = 0):
    """(key, value) of every dict entry in a JSON tree, depth first (the tree came from json.loads)."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _allowed_operator_name(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] == ["torch", "ops"]:
        return (len(parts) in (4, 5) and (parts[2] in OP_NAMESPACES or parts[2] == "higher_order")
                and all(_SYMBOL_NAME.fullmatch(p) for p in parts[3:]))
    return name in _SYMBOLIC_OP_NAMES


def sympy_expression_problem(text: str) -> str | None:
    """None when `text` is nothing but sympy constructor calls on literals and symbol names; else why not.

    Such an expression can be given to sympy.sympify (which evals it) without running anything else: no
    attribute access, no subscripts, no names but sympy's constructors and shape symbols, bounded powers."""
    if len(text) > _MAX_EXPR_CHARS:
        return f"{len(text)} characters"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not an expression"
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Load, ast.UnaryOp, ast.USub, ast.UAdd, ast.BinOp, ast.Add, ast.Sub,
                             ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Compare, ast.Eq, ast.NotEq, ast.Lt,
                             ast.LtE, ast.Gt, ast.GtE)):
            continue
        if isinstance(node, ast.Pow):
            return "'**' outside Pow(...)"
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or isinstance(node.value, float):
                continue
            if isinstance(node.value, int) and abs(node.value) < 2**63:
                continue
            if isinstance(node.value, str) and _SYMBOL_NAME.fullmatch(node.value):
                continue
            return f"literal {str(node.value)[:20]!r}"
        if isinstance(node, ast.Name):
            if node.id in SYMPY_NAMES or re.fullmatch(r"[a-z]+\d+", node.id):
                continue
            return f"name '{node.id}'"
        if isinstance(node, ast.keyword):
            if node.arg in SYMPY_KEYWORDS:
                continue
            return f"keyword '{node.arg}'"
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in SYMPY_NAMES:
                return "a call of something other than a sympy constructor"
            if node.func.id in _POWERS and not _small_exponent(node):
                return "a power with an exponent above 64"
            continue
        return f"{type(node).__name__} syntax"
    return None


def _small_exponent(call: ast.Call) -> bool:
    if len(call.args) != 2:
        return False
    exponent = call.args[1]
    if isinstance(exponent, ast.Call) and isinstance(exponent.func, ast.Name) and exponent.func.id == "Integer":
        exponent = exponent.args[0] if exponent.args else None
    if isinstance(exponent, ast.UnaryOp):
        exponent = exponent.operand
    return not isinstance(exponent, ast.Constant) or (isinstance(exponent.value, (int, float))
                                                      and abs(exponent.value) <= _MAX_EXPONENT)


def check_graph(ep: torch.export.ExportedProgram, source: str) -> None:
    """After loading: every node calls an allowed op object and passes no other callable."""
    for module in ep.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op not in ("placeholder", "get_attr", "call_function", "output"):
                raise InputError(f"{source}: node {node.name} is a {node.op} node, which torch.export never writes")
            if node.op == "call_function" and not _allowed_op(node.target):
                raise InputError(f"{source}: node {node.name} calls {node.target!r}, which is not an aten/prims/"
                                 "hwact op or an arithmetic builtin; refused", hint=TRUST_HINT)
            bad = [a for a in _leaves((node.args, node.kwargs)) if callable(a) and not isinstance(a, torch.Tensor)
                   and not _allowed_op(a) and not isinstance(a, torch.fx.Node)]
            if bad:
                raise InputError(f"{source}: node {node.name} passes the callable {bad[0]!r}; refused", hint=TRUST_HINT)


def _leaves(value):
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def _allowed_op(target) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return target.namespace in OP_NAMESPACES
    if isinstance(target, torch._ops.HigherOrderOperator):
        return True
    try:
        return target in SYMBOLIC_OPS
    except TypeError:  # unhashable
        return False


# ---------------------------------------------------------------------------------------------- loading
class _RefusedPickle(Exception):
    """Raised inside torch when it asks for a full unpickle of archive bytes."""


@contextlib.contextmanager
def _no_full_unpickling():
    """While torch loads the archive: torch.load only with weights_only=True, no pickle.loads, no torchbind."""
    real_load, real_loads, real_obj = torch.load, pickle.loads, torch._C._pickle_load_obj

    def weights_only_load(f, *args, weights_only=None, **kwargs):
        if weights_only is False:
            raise _RefusedPickle("torch.load(weights_only=False)")
        return real_load(f, *args, weights_only=True, **kwargs)

    def refuse(*_args, **_kwargs):
        raise _RefusedPickle("pickle.loads")

    torch.load, pickle.loads, torch._C._pickle_load_obj = weights_only_load, refuse, refuse
    try:
        yield
    finally:
        torch.load, pickle.loads, torch._C._pickle_load_obj = real_load, real_loads, real_obj



# ---------------------------------------------------------------------------------------------- treespecs
_MAX_SPEC_DEPTH = 64
_KEPT_CONTAINERS = {"builtins.tuple": tuple, "builtins.list": list, "torch.fx.immutable_collections.immutable_list": list}
_DICTS = ("builtins.dict", "collections.OrderedDict", "torch.fx.immutable_collections.immutable_dict")


def read_treespec(serialized: str) -> pytree.TreeSpec:
    """A pytree spec from its serialized JSON (protocol 1), without resolving any type the file names.

    Rule, node by node: a leaf stays a leaf; tuple and list nodes stay tuples and lists; dict nodes stay
    dicts with their keys; every other node (a Hugging Face ModelOutput, a dataclass, a namedtuple, ...)
    becomes a dict when its context is a JSON list of distinct field names, one per child (what
    transformers writes for a ModelOutput, e.g. ["logits"]), else a tuple. The leaves and their order are
    unchanged, so a graph's flat inputs and outputs are too. Contexts are parsed as plain JSON: no hook,
    no import, no lookup in torch's type registry."""
    try:
        protocol, schema = json.loads(serialized)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InputError(f"a pytree spec is not valid JSON ({first_line(exc)})") from None
    if protocol != 1:
        raise InputError(f"a pytree spec has protocol {protocol!r}; hwact reads protocol 1 (torch 2.x)")
    return pytree.tree_structure(_spec_value(schema, 0))


def _spec_value(schema, depth: int):
    """A stand-in value (zeros for leaves) with the structure `schema` describes; see read_treespec."""
    if depth > _MAX_SPEC_DEPTH:
        raise InputError(f"a pytree spec nests deeper than {_MAX_SPEC_DEPTH} levels")
    if not isinstance(schema, dict) or not isinstance(schema.get("children_spec"), list):
        raise InputError("a pytree spec node is not an object with a children_spec list")
    kind, children = schema.get("type"), schema["children_spec"]
    if kind is None:
        if children:
            raise InputError("a pytree spec leaf has children")
        return 0
    values = [_spec_value(child, depth + 1) for child in children]
    if kind in _KEPT_CONTAINERS:
        return _KEPT_CONTAINERS[kind](values)
    names = _context_names(schema.get("context"), len(values), keys_only=kind in _DICTS)
    return dict(zip(names, values)) if names is not None else tuple(values)


def _context_names(context, count: int, keys_only: bool) -> list | None:
    """The node's keys (dicts) or field names (other types) from its JSON context, or None."""
    try:
        names = json.loads(context) if isinstance(context, str) else None
    except (ValueError, RecursionError):
        names = None
    allowed = (str, int) if keys_only else (str,)
    if (isinstance(names, list) and len(names) == count and all(isinstance(n, allowed) for n in names)
            and len(set(names)) == count):
        return names
    if keys_only:
        raise InputError(f"a dict node of a pytree spec has keys that are not {count} distinct names")
    return None


@contextlib.contextmanager
def _own_treespec_reader():
    """While torch deserializes an archive, its module call specs are read by read_treespec."""
    from torch._export.serde import serialize

    real = serialize.treespec_loads
    serialize.treespec_loads = read_treespec
    try:
        yield
    finally:
        serialize.treespec_loads = real
