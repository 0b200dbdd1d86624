"""Run every benchmark script as its results were made (RUNS: the script and its arguments), then assemble
BENCHMARKS.md (`make bench`).

    python benchmarks/run_all.py [--only NAME ...]

Takes a long time on a 2-core machine (tens of minutes): each script trains or converts real models.
A script that fails is reported and the others still run; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ("bench_convert", "bench_convert_speed", "bench_recovery", "bench_int", "bench_int_gelu", "bench_hf_suite",
        "bench_int_cpu", "bench_int_cpu_kernels", "bench_int_cpu_rows", "bench_ethos_u", "bench_tvm --trials 64,192",
        "bench_tvm --models vit-s16 --recipe '' --trials 64,192 --tuned-models vit-s16 "
        "--out benchmarks/results/tvm_vit_s16.md",
        "bench_ethos_u_executorch", "bench_ethos_u_litert", "bench_ethos_u_gelu --seeds 0,1", "bench_cle",
        "bench_delta", "bench_delta_gru", "bench_logic", "bench_logic_accuracy", "bench_logic_fpga")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="script names, e.g. bench_delta")
    args = parser.parse_args()
    failed = []
    for run in RUNS:
        name, *arguments = shlex.split(run)
        if args.only and name not in args.only:
            continue
        print(f"== {run}", flush=True)
        if subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *arguments], cwd=ROOT).returncode:
            failed.append(run)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "assemble.py")], check=True)
    if failed:
        print("failed: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
