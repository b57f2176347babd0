"""What MLX runs on here: version, device, and measured matmul throughput."""

from __future__ import annotations

import time


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """float32 n x n matmul throughput on MLX's default device, in GFLOP/s."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    seconds = (time.perf_counter() - start) / repeats
    return 2 * n**3 / seconds / 1e9


def runtime_info() -> dict[str, str]:
    """MLX version, default device and available accelerators, for `localguard doctor`."""
    try:
        import mlx.core as mx
    except ImportError as exc:
        return {"mlx": f"not importable ({exc})"}
    info = {"mlx": mx.__version__, "mlx device": str(mx.default_device())}
    info["metal"] = "yes" if mx.metal.is_available() else "no"
    cuda = getattr(mx, "cuda", None)
    info["cuda (mlx)"] = "yes" if cuda is not None and cuda.is_available() else "no"
    return info
