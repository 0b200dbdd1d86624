"""Assemble BENCHMARKS.md from the per-area results that the benchmark scripts write.

    python benchmarks/assemble.py

Each script in benchmarks/ writes benchmarks/results/<area>.md (numbers only from what it printed,
with the machine and the command); this file concatenates them in a fixed order under one header.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ("convert", "convert_speed", "recovery", "int", "int_gelu", "hf_suite", "int_cpu", "int_cpu_kernels", "int_cpu_rows",
         "ethos_u", "ethos_u_executorch", "ethos_u_litert", "ethos_u_gelu", "tvm", "tvm_vit_s16", "cle", "delta", "delta_gru", "logic", "logic_accuracy", "logic_fpga")

HEADER = """# Benchmarks

Every number here was printed by a script in `benchmarks/`, with the machine and the command. Speed
claims are ratios against an anchor measured in the same run. This file is assembled from
`benchmarks/results/*.md` by `python benchmarks/assemble.py` (`make bench` re-runs everything).

Machines: the project's 2-core build machines (24 GiB, Debian 12, Python 3.11.7, torch 2.13.0+cpu,
onnxruntime 1.32.0): an AMD EPYC (AVX2, no VNNI) and an Intel Xeon, one per session; each section
names its CPU and its command (logic, delta, delta_gru and convert were rerun on 2026-12-04 after the
pipeline refactor of issue 13, on the AMD EPYC; hf_suite, int_cpu, int_cpu_kernels, int_cpu_rows, convert_speed,
ethos_u, ethos_u_executorch, ethos_u_litert, ethos_u_gelu, tvm, tvm_vit_s16 and logic are from 2026-12-05, AMD EPYC
with AVX-512 VNNI). Cores were shared with
other jobs while measuring: compare the ratios, measured in the same run. No GPU was available: CUDA
kernels are compiled, never timed.
"""


def demote(markdown: str) -> str:
    """Shift every heading one level down so each area becomes a section."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def main() -> None:
    sections = [demote((RESULTS / f"{name}.md").read_text().strip()) for name in ORDER
                if (RESULTS / f"{name}.md").exists()]
    extra = sorted(p.stem for p in RESULTS.glob("*.md") if p.stem not in ORDER)
    sections += [demote((RESULTS / f"{name}.md").read_text().strip()) for name in extra]
    (ROOT / "BENCHMARKS.md").write_text(HEADER + "\n" + "\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
