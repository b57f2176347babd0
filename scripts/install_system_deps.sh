#!/usr/bin/env bash
# System libraries localguard needs outside pip: on Linux, OpenBLAS, which localguard preloads so
# that MLX's CPU matmuls run 20-50x faster than with the reference BLAS of the mlx-cpu wheel.
set -euo pipefail
[ "$(uname -s)" = Linux ] || exit 0
if ldconfig -p 2>/dev/null | grep -q 'libopenblas\(p\)\?\.so\.0'; then
  exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing OpenBLAS (libopenblas0-pthread) for fast MLX on the CPU"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null
else
  echo "note: no OpenBLAS found; MLX will run 20-50x slower on the CPU." >&2
  echo "      Debian/Ubuntu: sudo apt-get install libopenblas0-pthread" >&2
  echo "      Fedora: sudo dnf install openblas-threads" >&2
fi
