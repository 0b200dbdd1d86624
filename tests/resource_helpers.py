"""Helpers of the resource and .npz tests: run the installed CLI measuring its peak memory; check errors."""

import io
import os
import subprocess
import sys

import numpy as np

PEAK_RSS_LIMIT = 1.5e9   # bytes; a convert of cnn-tiny peaks near 0.6 GB


def npy_header(shape, descr="<f4", fortran=False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue()


def run_measured(*args, timeout=180):
    """Run the installed CLI in a child of a fresh interpreter: (exit code, stdout, stderr, peak RSS bytes of
    the CLI process alone)."""
    exe = os.path.join(os.path.dirname(sys.executable), "hwact")
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stdout.write(done.stdout); sys.stderr.write(done.stderr); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr); "
             "sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, exe, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    *lines, peak = done.stderr.strip().splitlines()
    return done.returncode, done.stdout, "\n".join(lines), int(peak)


def assert_one_line_error(code, stderr, message):
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("hwact: error:") and message in lines[0], stderr
    assert "Traceback" not in stderr
