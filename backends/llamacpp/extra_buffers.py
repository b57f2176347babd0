"""llama.cpp's extra CPU buffer types (AMX tiles, weight repacking): on where they work, off for
models that would crash in them. GGUFModel and open_llama (llama-cpp-python's own Llama) both
decide here, so the guard and a plain baseline run on the same kernels.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from localguard.errors import InputError

# The ggml types with AMX tile kernels, and the row length each needs, as llama.cpp's AMX
# buffer type accepts weights (ggml-cpu/amx/amx.cpp supports_op, amx/common.h).
AMX_TILE_TYPES = {
    **dict.fromkeys(("Q4_0", "Q4_1", "Q8_0"), 32),
    **dict.fromkeys(("Q4_K", "Q5_K", "Q6_K", "IQ4_XS"), 256),
}
_amx_tiles_ok: bool | None = None  # the probe's answer, once per process


def amx_matrices(reader) -> list[str]:
    """The weight matrices of a GGUF (a gguf-py reader) that llama.cpp's AMX buffer type would
    take: a type with AMX tile kernels, row length a multiple of its block, 32n rows."""
    out = []
    for t in reader.tensors:
        block = AMX_TILE_TYPES.get(t.tensor_type.name)
        shape = [int(d) for d in t.shape]  # gguf order: row length first
        if block and len(shape) == 2 and shape[0] % block == 0 and shape[1] % 32 == 0:
            out.append(t.name)
    return out


def extra_buffer_types_safe(path: Path, reader=None) -> bool:
    """Whether llama.cpp may place this model's weights in its extra CPU buffer types (reader:
    the file's gguf-py reader, when the caller has it open; else the file is read if needed).

    A llama.cpp built with AMX (GGML_NATIVE on an AMX Xeon) puts Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K/
    IQ4_XS matrices in its AMX buffer type. Built by an older GCC (12.2, Debian 12), its AMX tile
    kernels are miscompiled: that GCC's _tile_loadconfig tells the compiler it reads 8 bytes, so
    the tile configuration's stores are dropped and LDTILECFG faults. Every batch of two or more
    tokens through such a matrix is then a SIGSEGV, whatever the shapes (one-token batches take
    an AVX512 path and work). So where the build has AMX, a child process tries the tile path
    (once per process); where it dies, models with such matrices load without the extra buffer
    types (repacking goes with them: llama.cpp has one switch). Elsewhere nothing changes.
    """
    global _amx_tiles_ok
    import llama_cpp

    if b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
        return True
    if _amx_tiles_ok is None:
        _amx_tiles_ok = probe_amx_tiles()
        if not _amx_tiles_ok:
            logging.getLogger(__name__).info(
                "llama.cpp's AMX kernels crash in this build: models with AMX-ready matrices "
                "load without llama.cpp's extra buffer types"
            )
    if _amx_tiles_ok:
        return True
    from localguard.backends.llamacpp.gguf_runtime import open_gguf

    try:
        return not amx_matrices(reader if reader is not None else open_gguf(path))
    except InputError:  # llama.cpp will say what is wrong with the file
        return False


_AMX_PROBE = """
import sys, llama_cpp
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(),
                                             llama_cpp.llama_model_default_params())
params = llama_cpp.llama_context_default_params()
params.n_ctx = params.n_batch = params.n_ubatch = 16
params.n_threads = params.n_threads_batch = 1
ctx = llama_cpp.llama_init_from_model(model, params) if model else None
tokens = (llama_cpp.llama_token * 4)(1, 2, 3, 4)
ok = ctx and llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, 4)) == 0
sys.exit(0 if ok else 1)
"""


def probe_amx_tiles() -> bool:
    """Whether a 4-token batch through a tiny Q8_0 model (every matrix AMX-ready) decodes, in a
    child process with the extra buffer types on."""
    import subprocess
    import sys
    import tempfile

    import gguf

    q8, n = gguf.GGMLQuantizationType.Q8_0, 32
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="localguard-amx-") as folder:
        path = Path(folder) / "probe.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_context_length(256)
        writer.add_embedding_length(n)
        writer.add_block_count(1)
        writer.add_feed_forward_length(n)
        writer.add_head_count(1)
        writer.add_head_count_kv(1)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_tokenizer_model("llama")
        writer.add_token_list([f"t{i}" for i in range(n)])
        writer.add_token_scores([0.0] * n)
        writer.add_token_types([1] * n)
        for name in ("output_norm", "blk.0.attn_norm", "blk.0.ffn_norm"):
            writer.add_tensor(f"{name}.weight", np.ones(n, np.float32))
        matrices = ["token_embd"] + [
            f"blk.0.{m}" for m in ("attn_q", "attn_k", "attn_v", "attn_output")
        ]
        matrices += [f"blk.0.{m}" for m in ("ffn_gate", "ffn_up", "ffn_down")]
        for name in matrices:
            weights = rng.standard_normal((n, n)).astype(np.float32) * 0.1
            writer.add_tensor(f"{name}.weight", gguf.quants.quantize(weights, q8), raw_dtype=q8)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        try:
            child = subprocess.run(
                [sys.executable, "-c", _AMX_PROBE, str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
        except (OSError, ValueError, TypeError, subprocess.SubprocessError):
            return False  # no child, no proof: treat the tiles as broken
    return child.returncode == 0


@contextlib.contextmanager
def _stock_model_defaults(extra_bufts: bool) -> Iterator[None]:
    """llama-cpp-python's Llama takes no use_extra_bufts: while in here, the model defaults it
    starts from have the value given."""
    import importlib

    low = importlib.import_module("llama_cpp.llama_cpp")  # the module Llama's code calls
    default = low.llama_model_default_params

    def params():
        out = default()
        out.use_extra_bufts = extra_bufts
        return out

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default


def open_llama(path: Path, **kwargs):
    """llama-cpp-python's high-level Llama on a GGUF file, with the extra buffer types only
    where extra_buffer_types_safe allows them (as GGUFModel loads it)."""
    import llama_cpp

    if extra_buffer_types_safe(path):
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    with _stock_model_defaults(False):
        return llama_cpp.Llama(model_path=str(path), **kwargs)
