"""Find activation sites in a Graph, including GELU written out by hand.

GELU appears in traced graphs in four shapes, all reported as one site each:
  * aten.gelu(x)                        form "erf"   (nn.GELU, F.gelu)
  * aten.gelu(x, approximate="tanh")    form "tanh-approximate"
  * 0.5*x*(1+erf(x/sqrt(2)))            form "erf-formula" (x/1.4142 or x*0.7071; the 0.5 may sit anywhere
                                         in the product, or be a division by 2)
  * 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))   form "tanh-formula" (x^3 as pow(x,3) or x*x*x)
A formula site's `output` is the final multiply and `x` its input; replacing `output` by f(x) and
removing dead code deletes the whole subgraph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx

from hwact.errors import InputError
from hwact.ir.graph import Graph, module_class, module_path, op_name

aten = torch.ops.aten

# Plain (single-node) activations, by op name, with their form label.
SIMPLE_ACTIVATIONS = {
    "aten.relu.default": "relu", "aten.relu_.default": "relu", "aten.relu6.default": "relu6",
    "aten.hardtanh.default": "hardtanh", "aten.leaky_relu.default": "leaky-relu", "aten.prelu.default": "prelu",
    "aten.silu.default": "silu", "aten.sigmoid.default": "sigmoid", "aten.tanh.default": "tanh",
    "aten.hardswish.default": "hardswish", "aten.elu.default": "elu", "aten.mish.default": "mish",
    "hwact.helu.default": "helu",
}


@dataclass
class Site:
    output: torch.fx.Node      # the node whose value is the activation's output
    x: torch.fx.Node           # the activation's input
    op: str                    # op name of the characteristic node (aten.gelu.default, aten.erf.default, ...)
    form: str
    module: str                # owning module path ('' = top level)
    module_class: str

    def describe(self) -> dict:
        return {"node": self.output.name, "op": self.op, "form": self.form, "module": self.module,
                "module_class": self.module_class}

    @property
    def is_gelu(self) -> bool:
        return self.form in ("erf", "tanh-approximate", "erf-formula", "tanh-formula")


def _is_op(node, *ops) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in ops


def _const(value, expected: float, rel: float = 1e-3) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isclose(value, expected, rel_tol=rel)


def _single_user(node: torch.fx.Node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _other(node: torch.fx.Node, known):
    a, b = node.args[0], node.args[1]
    return b if a is known else a


def _scaled_input(node, factor: float):
    """x if node computes x*factor or x/(1/factor), else None."""
    if _is_op(node, aten.mul.Tensor) and _const(node.args[1], factor):
        return node.args[0]
    if _is_op(node, aten.mul.Tensor) and _const(node.args[0], factor):
        return node.args[1]
    if _is_op(node, aten.div.Tensor) and _const(node.args[1], 1.0 / factor):
        return node.args[0]
    return None


def _half_product(one_plus: torch.fx.Node, x: torch.fx.Node):
    """Final node of 0.5 * x * one_plus (any association order, 0.5 or /2), or None."""
    first = _single_user(one_plus)
    if not _is_op(first, aten.mul.Tensor):
        return None
    other = _other(first, one_plus)
    if isinstance(other, torch.fx.Node) and _scaled_input(other, 0.5) is x:
        return first                                       # (0.5*x) * (1+f)
    if other is x:                                         # x*(1+f), then *0.5 or /2
        last = _single_user(first)
        return last if last is not None and _scaled_input(last, 0.5) is first else None
    if _const(other, 0.5):                                 # 0.5*(1+f), then *x
        last = _single_user(first)
        return last if _is_op(last, aten.mul.Tensor) and _other(last, first) is x else None
    return None


def _one_plus(node: torch.fx.Node):
    """The add computing 1 + node, or None."""
    user = _single_user(node)
    if _is_op(user, aten.add.Tensor) and any(_const(a, 1.0) for a in user.args[:2]):
        return user
    return None


def _match_erf_formula(erf: torch.fx.Node):
    x = _scaled_input(erf.args[0], 1.0 / math.sqrt(2.0))
    one_plus = _one_plus(erf)
    if x is None or one_plus is None:
        return None
    out = _half_product(one_plus, x)
    return (out, x) if out is not None else None


def _monomial(node, depth: int = 0):
    """(coefficient, {node: power}) of a product of scalars, nodes and integer powers, else None."""
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node), {}
    if depth > 6 or not isinstance(node, torch.fx.Node):
        return None
    if _is_op(node, aten.mul.Tensor):
        left, right = _monomial(node.args[0], depth + 1), _monomial(node.args[1], depth + 1)
        if left is None or right is None:
            return None
        powers = dict(left[1])
        for base, power in right[1].items():
            powers[base] = powers.get(base, 0) + power
        return left[0] * right[0], powers
    if _is_op(node, aten.pow.Tensor_Scalar) and isinstance(node.args[1], (int, float)) and float(node.args[1]).is_integer():
        inner = _monomial(node.args[0], depth + 1)
        if inner is None or inner[0] != 1.0:
            return None
        return 1.0, {base: power * int(node.args[1]) for base, power in inner[1].items()}
    return 1.0, {node: 1}


def _match_tanh_formula(tanh: torch.fx.Node):
    inner = _scaled_input(tanh.args[0], math.sqrt(2.0 / math.pi))
    if not _is_op(inner, aten.add.Tensor):
        return None
    for x, cubic in ((inner.args[0], inner.args[1]), (inner.args[1], inner.args[0])):
        if not isinstance(x, torch.fx.Node) or not isinstance(cubic, torch.fx.Node):
            continue
        term = _monomial(cubic)
        if term is not None and _const(term[0], 0.044715) and term[1] == {x: 3}:
            one_plus = _one_plus(tanh)
            out = _half_product(one_plus, x) if one_plus is not None else None
            return (out, x) if out is not None else None
    return None


def find_sites(graph: Graph) -> list[Site]:
    """Every activation site, in graph order; hand-written GELU formulas count as one site each."""
    sites = []
    for node in graph.call_nodes():
        name = op_name(node)
        where = (module_path(node), module_class(node))
        if node.target is aten.gelu.default:
            approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
            form = "tanh-approximate" if approx == "tanh" else "erf"
            sites.append(Site(node, node.args[0], name, form, *where))
        elif node.target is aten.erf.default and (match := _match_erf_formula(node)):
            sites.append(Site(match[0], match[1], name, "erf-formula", *where))
        elif node.target is aten.tanh.default and (match := _match_tanh_formula(node)):
            sites.append(Site(match[0], match[1], name, "tanh-formula", *where))
        elif name in SIMPLE_ACTIVATIONS:
            sites.append(Site(node, node.args[0], name, SIMPLE_ACTIVATIONS[name], *where))
    return sites


def gelu_sites(graph: Graph) -> list[Site]:
    return [s for s in find_sites(graph) if s.is_gelu]


def _matches(site: Site, patterns: tuple[str, ...]) -> bool:
    """Whether the site's module path or node name matches one of the glob `patterns`."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(site.module, p) or fnmatchcase(site.output.name, p) for p in patterns)


def select(sites: list[Site], only: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> list[Site]:
    """Sites whose module path matches any `only` glob (all when empty) and no `skip` glob."""
    return [s for s in sites if (not only or _matches(s, only)) and not _matches(s, skip)]


def require_matches(sites: list[Site], only: tuple[str, ...] = (), skip: tuple[str, ...] = (),
                    kind: str = "GELU") -> None:
    """Raise InputError naming the first --only/--skip glob that matches none of `sites` (a typo would
    otherwise leave the model untouched, or swap what was meant to be kept, without a word)."""
    for option, patterns in (("--only", only), ("--skip", skip)):
        for pattern in patterns:
            if not any(_matches(site, (pattern,)) for site in sites):
                paths = list(dict.fromkeys(s.module or s.output.name for s in sites))
                hint = (f"{kind} sites: {', '.join(paths[:5])}" + (f" ({len(paths)} in all)" if len(paths) > 5 else "")
                        if paths else f"the model has no {kind} site")
                raise InputError(f"{option} '{pattern}' matches no {kind} site", hint=hint)


def replace_site(graph: Graph, site: Site, target, *extra_args) -> torch.fx.Node:
    """Insert target(site.x, *extra_args) in place of the site's output; dead formula nodes go later."""
    with graph.fx.inserting_after(site.output):
        new = graph.fx.call_function(target, (site.x, *extra_args))
    new.meta = dict(site.output.meta)
    site.output.replace_all_uses_with(new)
    return new
