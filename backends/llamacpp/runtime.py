"""What the installed llama.cpp build can do: version, GPU offload, CPU and GPU features."""

from __future__ import annotations


def enabled_features(system_info: str) -> dict[str, list[str]]:
    """llama.cpp's system info ("CUDA : ARCHS = 900 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | ...")
    as the features switched on (= 1) in each backend's section."""
    sections: dict[str, list[str]] = {}
    current = ""
    for part in system_info.split("|"):
        part = part.strip()
        if " : " in part:
            current, part = (s.strip() for s in part.split(" : ", 1))
            sections.setdefault(current, [])
        name, _, value = part.partition("=")
        if current and value.strip() == "1":
            sections[current].append(name.strip())
    return sections


def runtime_info() -> dict[str, str]:
    """llama-cpp-python version and build features, for `localguard doctor`."""
    try:
        import llama_cpp
    except ImportError as exc:
        return {"llama.cpp": f"not importable ({exc})"}
    system = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    sections = enabled_features(system)
    found = {name.upper() for name in sections}
    backends = [name for name in ("Metal", "CUDA", "Vulkan", "BLAS") if name.upper() in found]
    return {
        "llama.cpp": llama_cpp.__version__,
        "gpu offload": "yes" if llama_cpp.llama_supports_gpu_offload() else "no",
        "llama.cpp backends": ", ".join(backends) or "CPU",
        "llama.cpp cpu features": " ".join(sections.get("CPU", [])) or "-",
    }
