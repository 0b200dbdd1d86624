"""Hardware targets, one TOML file each in this folder (or any TOML file given by path to --target).

A target file says what deploying to it means, per kind of model (hwact/ir/kinds.py: tensor, logic,
delta): the default recipe (hwact/passes/recipes.py, overridable with --recipe/--passes) and the chain
of backends (hwact/backends/) that emit and verify the artifacts; then the options of those backends
and a rule table of which ops the hardware runs natively, with the reason when not:

    name = "fpga-lut6"
    kind = "fpga"                         # cpu, gpu, npu, fpga
    description = "..."
    numeric_formats = ["bit", "int8", "int32"]
    clock_mhz = 200

    [deploy.logic]
    recipe = "logic"
    backends = ["verilog"]

    [backend.verilog]                     # options of a backend in a chain (defaults: the backend's)
    synthesis = "lut6"

    [[rule]]
    ops = ["aten.gelu.*", "aten.erf.*"]   # fnmatch patterns on op names such as aten.gelu.default
    native = false
    reason = "no float units: exp/erf have no integer datapath"

The first rule whose pattern matches an op decides; an op no rule matches is not native, with reason
"not listed for this target". Adding a target is adding one such file; the pipeline never branches on
a target's name.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hwact.errors import InputError
from hwact.ir.graph import Graph, module_path, op_name
from hwact.ir.summary import float_compute_nodes, is_bookkeeping


@dataclass(frozen=True)
class Deployment:
    """How a target deploys one kind of model: the default recipe and the backend chain."""
    recipe: str
    backends: tuple[str, ...]


@dataclass
class Target:
    name: str
    kind: str
    description: str
    numeric_formats: list[str]
    clock_mhz: float | None
    deploy: dict[str, Deployment] = field(default_factory=dict)
    backend_options: dict[str, dict] = field(default_factory=dict)
    rules: list[dict] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def support(self, op: str) -> tuple[bool, str]:
        """(runs natively, reason) for an op name like 'aten.linear.default'."""
        for rule in self.rules:
            if any(fnmatch.fnmatchcase(op, pattern) for pattern in rule["ops"]):
                return bool(rule["native"]), rule.get("reason", "")
        return False, "not listed for this target"

    def deployment(self, model_kind: str, source: str) -> Deployment:
        """The recipe and backends for a model of `model_kind`; an error when this target takes none."""
        if model_kind not in self.deploy:
            takes = [name for name in target_names() if model_kind in load_target(name).deploy]
            raise InputError(f"{source}: target '{self.name}' deploys {', '.join(self.deploy) or 'no'} models, "
                             f"not {model_kind} models", hint=f"targets for {model_kind} models: {', '.join(takes)}")
        return self.deploy[model_kind]

    @property
    def integer_recipe(self) -> str | None:
        """The int8 recipe the target deploys tensor models with by default, when it names one."""
        tensor = self.deploy.get("tensor")
        return tensor.recipe if tensor is not None and tensor.recipe.startswith("int8") else None

    @property
    def has_float_units(self) -> bool:
        return any(fmt.startswith(("float", "bfloat")) for fmt in self.numeric_formats)

    def support_report(self, graph: Graph, advice: Callable[[str], str] | None = None) -> dict:
        """Per op: native or not, with the reason and (for blockers) the first nodes and module paths.

        `advice(op, recipe)` (hwact.passes.lowerable.lowering_advice: targets sit below the passes and cannot
        import their table, so the caller hands it in; recipe: integer_recipe) is appended to the reason of an op that blocks this target
        only because it computes in float, on a target with no float units that runs hwact's integer ops."""
        native: dict[str, int] = {}
        blocked: dict[str, dict] = {}
        # an op the target has a datapath for still needs integer operands when it has no float units
        float_nodes = set() if self.has_float_units else set(float_compute_nodes(graph))
        integer_ops = self.support("hwact.int_linear.default")[0]
        for node in graph.call_nodes():
            name = op_name(node)
            if is_bookkeeping(node):
                continue
            ok, reason = self.support(name)
            if ok and node in float_nodes:
                ok, reason = False, f"computes in float: {self.name} has no float units"
            if ok:
                native[name] = native.get(name, 0) + 1
                continue
            if advice is not None and integer_ops and node in float_nodes:
                reason = f"{reason}; {advice(name, self.integer_recipe)}"
            entry = blocked.setdefault(name, {"count": 0, "reason": reason, "nodes": []})
            entry["count"] += 1
            if len(entry["nodes"]) < 5:
                entry["nodes"].append(f"{node.name} ({module_path(node) or 'top'})")
        return {"target": self.name, "native": dict(sorted(native.items())),
                "not_native": dict(sorted(blocked.items())), "deployable": not blocked}


def target_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".toml"))


def load_target(name_or_path: str) -> Target:
    """A built-in target by name, or the TOML file at a path (anything with a '/' or ending in .toml)."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError(f"{name_or_path}: no such target file")
        text, default_name = _read_text(path), path.stem
    else:
        names = target_names()
        if name_or_path not in names:
            raise InputError(f"unknown target '{name_or_path}'",
                             hint="known targets: " + ", ".join(names) + ", or a path to a target .toml file")
        text, default_name = resources.files(__name__).joinpath(f"{name_or_path}.toml").read_text(), name_or_path
    return parse_target(text, default_name, name_or_path)


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > 1 << 20:
            raise InputError(f"{path}: a target file of {path.stat().st_size} bytes (the limit is 1 MiB)")
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable target file ({exc})") from exc


def parse_target(text: str, default_name: str, source: str) -> Target:
    """A Target from TOML text; every missing or mistyped key is an InputError naming `source`."""
    try:
        raw = tomllib.loads(text)
        deploy = {kind: Deployment(str(entry.get("recipe", "none")), tuple(str(b) for b in entry["backends"]))
                  for kind, entry in raw.get("deploy", {}).items()}
        rules = raw.get("rule", [])
        for rule in rules:
            if not isinstance(rule["ops"], list) or not isinstance(rule["native"], bool):
                raise TypeError("every [[rule]] needs ops = [...] and native = true|false")
        return Target(name=str(raw.get("name", default_name)), kind=str(raw["kind"]),
                      description=str(raw.get("description", "")), numeric_formats=list(raw.get("numeric_formats", [])),
                      clock_mhz=raw.get("clock_mhz"), deploy=deploy, backend_options=dict(raw.get("backend", {})),
                      rules=rules, raw=raw)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InputError(f"{source}: not a valid target file ({type(exc).__name__}: {exc})",
                         hint="see hwact/targets/cpu.toml for the format") from exc
