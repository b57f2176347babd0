"""What the installed llama.cpp build can do: version, GPU offload, CPU and GPU features."""

from __future__ import annotations


def runtime_info() -> dict[str, str]:
    """llama-cpp-python version and build features, for `localguard doctor`."""
    try:
        import llama_cpp
    except ImportError as exc:
        return {"llama.cpp": f"not importable ({exc})"}
    system = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    features = [part.strip() for part in system.split("|") if part.strip().endswith("= 1")]
    backends = [
        name for name in ("Metal", "CUDA", "Vulkan", "BLAS") if name.upper() in system.upper()
    ]
    return {
        "llama.cpp": llama_cpp.__version__,
        "gpu offload": "yes" if llama_cpp.llama_supports_gpu_offload() else "no",
        "llama.cpp backends": ", ".join(backends) or "CPU",
        "llama.cpp cpu features": " ".join(f.split("=")[0].strip() for f in features) or "-",
    }
