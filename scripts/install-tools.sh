#!/bin/sh
# Installs the real target toolchains the tests run: FPGA tools, the aarch64 cross compiler and
# qemu-user, and espeak-ng/sox for offline speech data. Skips the install when all are present.
set -e
need=""
for tool in yosys iverilog verilator aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64 espeak-ng sox; do
    command -v "$tool" >/dev/null 2>&1 || need="yes"
done
[ -z "$need" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    yosys iverilog verilator gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross \
    qemu-user espeak-ng sox
