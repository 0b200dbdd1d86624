"""Hardware targets, one TOML file each in this folder.

A target file names the target, its kind (cpu, gpu, npu, fpga), numeric formats, clock, and an ordered
rule table that says which ops it runs natively:

    [[rule]]
    ops = ["aten.gelu.*", "aten.erf.*"]     # fnmatch patterns on op names such as aten.gelu.default
    native = false
    reason = "no float units: exp/erf have no integer datapath"

The first rule whose pattern matches an op decides; an op no rule matches is not native, with reason
"not listed for this target".
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from hwact.errors import InputError


@dataclass
class Target:
    name: str
    kind: str
    description: str
    numeric_formats: list[str]
    clock_mhz: float | None
    rules: list[dict] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def support(self, op: str) -> tuple[bool, str]:
        """(runs natively, reason) for an op name like 'aten.linear.default'."""
        for rule in self.rules:
            if any(fnmatch.fnmatchcase(op, pattern) for pattern in rule["ops"]):
                return bool(rule["native"]), rule.get("reason", "")
        return False, "not listed for this target"


def target_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".toml"))


def load_target(name: str) -> Target:
    names = target_names()
    if name not in names:
        raise InputError(f"unknown target '{name}'", hint="known targets: " + ", ".join(names))
    raw = tomllib.loads(resources.files(__name__).joinpath(f"{name}.toml").read_text())
    return Target(name=raw.get("name", name), kind=raw["kind"], description=raw["description"],
                  numeric_formats=raw.get("numeric_formats", []), clock_mhz=raw.get("clock_mhz"),
                  rules=raw.get("rule", []), raw=raw)
