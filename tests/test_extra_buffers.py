"""Quantized GGUF files decode through llama.cpp on this machine without crashing.

A llama.cpp built with AMX by an older GCC dies of SIGSEGV on any batch of two or more tokens
through an AMX-ready matrix (Q8_0, Q4_0, K-quants); such models then load without llama.cpp's
extra buffer types (extra_buffers.extra_buffer_types_safe). Each decode here runs in a child
process, so a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import make_tiny_model

pytest.importorskip("mlx_lm")
llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from localguard.backends.llamacpp import extra_buffers, gguf_runtime  # noqa: E402
from localguard.backends.llamacpp.convert import convert_to_gguf  # noqa: E402
from localguard.backends.llamacpp.quantize import quantize  # noqa: E402

TOKENS = list(range(3, 22))  # one batch of 19: the path that crashed

_CHILD = """
import sys
import numpy as np
from localguard.backends.llamacpp import extra_buffers, gguf_runtime

path, out, how = sys.argv[1:4]
ids = [int(i) for i in sys.argv[4].split(",")]
if how == "stock":
    llm = extra_buffers.open_llama(path, n_ctx=64, n_batch=64, n_threads=1, logits_all=True,
                                  verbose=False)
    llm.eval(ids)
    np.save(out, np.array(llm.scores[: len(ids)], dtype=np.float32))
else:
    if how == "forced":  # llama.cpp's own default, whatever the build
        gguf_runtime.extra_buffer_types_safe = lambda path, reader=None: True
    with gguf_runtime.GGUFModel(path, n_ctx=64, n_threads=1) as llm:
        logits = llm.eval(ids)
        llm.feed([ids[0]])
    np.save(out, logits)
"""


def _decode_in_child(path: Path, tmp_path: Path, how: str = "model"):
    """(return code, logits or None, stderr) of one batch decoded in a fresh process."""
    out = tmp_path / f"{path.stem}-{how}.npy"
    args = [str(path), str(out), how, ",".join(map(str, TOKENS))]
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, timeout=300
    )
    logits = np.load(out) if child.returncode == 0 else None
    return child.returncode, logits, child.stderr[-2000:]


def _amx_in_build() -> bool:
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny llama (SentencePiece vocabulary) as F32, Q8_0 and Q4_0 GGUF files."""
    root = tmp_path_factory.mktemp("runtime")
    folder = make_tiny_model("llama", root / "llama-spm", tokenizer="sentencepiece")
    out = {"F32": root / "model-F32.gguf"}
    convert_to_gguf(folder, out["F32"], outtype="f32")
    for kind in ("Q8_0", "Q4_0"):
        out[kind] = root / f"model-{kind}.gguf"
        quantize(out["F32"], out[kind], kind, threads=1)
    return out


def test_amx_matrices(files: dict[str, Path]) -> None:
    """Hidden 64 fits the AMX blocks of Q8_0 and Q4_0 (32): every layer matrix is AMX-ready;
    float files have none."""
    for kind in ("Q8_0", "Q4_0"):
        names = extra_buffers.amx_matrices(gguf_runtime.open_gguf(files[kind]))
        assert {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.1.ffn_down.weight"} <= set(names)
    assert extra_buffers.amx_matrices(gguf_runtime.open_gguf(files["F32"])) == []
    assert extra_buffers.extra_buffer_types_safe(files["F32"])


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0"])
def test_quantized_model_decodes(kind: str, files: dict[str, Path], tmp_path: Path) -> None:
    """A batch through GGUFModel finishes, and its logits are the F32 file's up to rounding."""
    code, logits, err = _decode_in_child(files[kind], tmp_path)
    assert code == 0, f"decoding {kind} died ({code}):\n{err}"
    with gguf_runtime.GGUFModel(files["F32"], n_ctx=64, n_threads=1) as llm:
        reference = llm.eval(TOKENS)
    assert logits.shape == reference.shape
    assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.95  # 0.9998 / 0.990 here


def test_stock_llama_decodes(files: dict[str, Path], tmp_path: Path) -> None:
    """llama-cpp-python's own Llama, as open_llama makes it (the judge, the benchmark)."""
    code, logits, err = _decode_in_child(files["Q8_0"], tmp_path, "stock")
    assert code == 0, f"stock Llama died ({code}):\n{err}"
    assert logits.shape[0] == len(TOKENS) and np.isfinite(logits).all()


def test_probe_predicts_the_crash(files: dict[str, Path], tmp_path: Path) -> None:
    """With the extra buffer types forced on, the Q8_0 file decodes exactly where the probe
    says AMX tiles work (always, without AMX in the build)."""
    code, _, err = _decode_in_child(files["Q8_0"], tmp_path, "forced")
    works = extra_buffers.probe_amx_tiles() if _amx_in_build() else True
    assert (code == 0) == works, f"forced decode returned {code}, probe said {works}:\n{err}"
