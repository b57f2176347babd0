"""The import stage: a GGUF file that llama.cpp runs becomes a model folder that localguard
fine-tunes, with its parity against the original measured and kept beside it.

`localguard import MODEL.gguf --out DIR` writes DIR; a `.gguf` path given as a model anywhere
(hub.resolve_model) is imported once into LOCALGUARD_HOME/imports/<sha256 of the file>/model
and reused. The conversion itself is backends/llamacpp/gguf_import.py. Parity (DIR/import.json):
the parity texts (localguard/parity_texts.py, the export's too) tokenized by the imported
tokenizer (encode_text, the path every stage uses) and by llama.cpp on the original file, and
the last-token logits of a few prompts in mlx-lm on the import against llama.cpp on the
original. A quantized original legitimately
differs in its logits, so differences are reported, not refused; a tokenization difference is
also printed as a warning, since training would then see other ids than llama.cpp serves.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from localguard import __version__
from localguard.errors import InputError
from localguard.files import file_sha256, staged_folder, write_json
from localguard.home import home
from localguard.parity_texts import PARITY_TEXTS
from localguard.stats import TOP_K, logit_agreement

REPORT_FILE = "import.json"
REPORT_KIND = "localguard-import"
REPORT_FORMAT = 1

PARITY_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
]
PARITY_CHAT = "What is the capital of France?"
"""Logit parity: the prompts as plain text, and one user message through the chat template."""

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def imports_root() -> Path:
    """Where `.gguf` models given by path are imported: LOCALGUARD_HOME/imports."""
    return home() / "imports"


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's sha256, hashed once per process for an unchanged file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = file_sha256(path)
    return _SHA_MEMO[key]


def _check_source(gguf_path: Path) -> Path:
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise InputError(f"{gguf_path}: no such GGUF file")
    return gguf_path.resolve()


def import_model(
    gguf_path: Path,
    out_dir: Path,
    *,
    force: bool = False,
    dtype: str = "auto",
    measure: bool = True,
    log: Log = _stderr,
) -> dict:
    """Import gguf_path into out_dir (staged, renamed when complete, import.json included);
    returns the report written to out_dir/import.json."""
    from localguard.backends.llamacpp.gguf_import import import_gguf

    gguf_path, out_dir = _check_source(gguf_path), Path(out_dir).expanduser()
    if out_dir.exists() and not force:
        raise InputError(f"{out_dir} exists; pass --force to replace it")
    sha = _sha256(gguf_path)
    start = time.perf_counter()
    with staged_folder(out_dir) as tmp:
        summary = import_gguf(gguf_path, tmp, dtype=dtype, source={"sha256": sha})
        converted = time.perf_counter() - start
        parity = measure_parity(gguf_path, tmp, summary) if measure else {"skipped": "not asked"}
        report = {
            "kind": REPORT_KIND,
            "format": REPORT_FORMAT,
            "localguard": __version__,
            "source": str(gguf_path),
            "sha256": sha,
            "model": str(out_dir),
            **summary,
            "parity": parity,
            "seconds": {
                "convert": round(converted, 2),
                "total": round(time.perf_counter() - start, 2),
            },
        }
        write_json(tmp / REPORT_FILE, report)
    tok = parity.get("tokenization")
    if tok and tok["equal"] < tok["total"]:
        log(
            f"warning: the imported tokenizer differs from llama.cpp's on "
            f"{tok['total'] - tok['equal']} of {tok['total']} parity texts "
            f"(see {out_dir / REPORT_FILE})"
        )
    return report


def cached_import(gguf_path: Path, *, log: Log = _stderr) -> Path:
    """The model folder for a GGUF file, imported into LOCALGUARD_HOME/imports/<sha256>/model
    the first time and reused afterwards."""
    gguf_path = _check_source(gguf_path)
    folder = imports_root() / _sha256(gguf_path) / "model"
    if (folder / REPORT_FILE).is_file() and (folder / "config.json").is_file():
        return folder
    log(f"importing {gguf_path.name} into {folder} (once)")
    import_model(gguf_path, folder, force=True, log=log)
    return folder


# --- parity -------------------------------------------------------------------------------


def measure_parity(gguf_path: Path, model_dir: Path, summary: dict) -> dict:
    """Tokenization and last-token logits of the import (MLX) against the original (llama.cpp).

    Both models see the same ids (the import's encoding, with BOS where the file adds one);
    MLX runs first and is closed before llama.cpp loads, so only one model is in memory."""
    try:
        from localguard.backends.factory import open_guard_backend
        from localguard.backends.llamacpp.gguf_runtime import GGUFModel
    except ImportError as exc:
        return {"skipped": f"a backend is missing ({exc})"}
    bos = summary["special_ids"].get("bos") if summary["add_bos"] else None
    mlx = open_guard_backend(model_dir, "mlx")
    try:
        text_ids = [mlx.encode_text(t) for t in PARITY_TEXTS]
        prompts = list(PARITY_PROMPTS)
        sequences = [mlx.encode_text(p) for p in prompts]
        if summary["chat_template"]:
            prompts.append(f"chat: {PARITY_CHAT}")
            chat = [{"role": "user", "content": PARITY_CHAT}]
            sequences.append(mlx.encode_chat(chat, add_generation_prompt=True))
        if bos is not None:
            sequences = [s if s[:1] == [bos] else [bos, *s] for s in sequences]
        want = []
        for ids in sequences:
            mlx.reset()
            want.append(mlx.feed(ids, every=False).logits)
    finally:
        mlx.close()
    n_ctx = max(len(s) for s in sequences) + 8
    with GGUFModel(gguf_path, n_ctx=n_ctx, f32_cache=True) as llm:
        got_ids = [llm.tokenize(t, special=False, add_bos=False) for t in PARITY_TEXTS]
        got = []
        for ids in sequences:
            llm.reset()
            got.append(llm.feed(ids, all_logits=False)[-1])
    return {
        "tokenization": _tokenization(text_ids, got_ids),
        "logits": _logits(prompts, sequences, want, got),
    }


def _tokenization(imported: list[list[int]], original: list[list[int]]) -> dict:
    differ = [
        {"text": text, "import": a, "llama_cpp": b}
        for text, a, b in zip(PARITY_TEXTS, imported, original, strict=True)
        if a != b
    ]
    return {"equal": len(PARITY_TEXTS) - len(differ), "total": len(PARITY_TEXTS), "differ": differ}


def _logits(prompts: list[str], sequences: list, want: list, got: list) -> dict:
    rows = []
    for prompt, ids, a, b in zip(prompts, sequences, want, got, strict=True):
        n = min(len(a), len(b))
        a, b = np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64)
        figures = logit_agreement(a[None], b[None])
        top2 = np.sort(a)[-2:]
        rows.append(
            {
                "prompt": prompt,
                "tokens": len(ids),
                "max_abs_diff": figures["max_logit_diff"],
                "argmax_mlx": int(a.argmax()),
                "argmax_llama_cpp": int(b.argmax()),
                # a small lead flips under any rounding: it explains an argmax disagreement
                "top2_margin_mlx": float(top2[1] - top2[0]),
                "top5_overlap": figures["top5_agreement"],
            }
        )
    agree = sum(r["argmax_mlx"] == r["argmax_llama_cpp"] for r in rows)
    return {
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "argmax_agreement": agree / len(rows),
        "argmax_equal": agree,
        "top5_overlap": float(np.mean([r["top5_overlap"] for r in rows])),
        "prompts": rows,
    }


def format_report(report: dict) -> str:
    """A few lines for the terminal: what was imported and its parity."""
    lines = [
        f"{Path(report['source']).name}: {report['architecture']} -> {report['model_type']}, "
        f"{report['n_vocab']} tokens ({report['tokenizer']}"
        + (f", {report['pre_tokenizer']}" if report.get("pre_tokenizer") else "")
        + f"), weights {report['dtype']}, tensors "
        + ", ".join(f"{k} {v}" for k, v in report["tensor_types"].items())
    ]
    parity = report["parity"]
    if "skipped" in parity:
        lines.append(f"parity: not measured ({parity['skipped']})")
    else:
        tok, logits = parity["tokenization"], parity["logits"]
        lines.append(
            f"parity with llama.cpp: tokens equal on {tok['equal']}/{tok['total']} texts; "
            f"last-token logits max |diff| {logits['max_abs_diff']:.3g}, argmax agrees on "
            f"{logits['argmax_equal']}/{len(logits['prompts'])} prompts, top-{TOP_K} overlap "
            f"{logits['top5_overlap']:.0%}"
        )
        if set(report["tensor_types"]) - {"F32", "F16", "BF16"}:
            lines.append(
                "(a quantized original: llama.cpp multiplies its blocks by quantized "
                "activations, the import holds the exact dequantized weights, so logits differ)"
            )
    if report.get("head_rows_dropped"):
        lines.append(
            f"dropped {report['head_rows_dropped']} safety-head rows of a localguard export"
        )
    if report.get("hparam_mismatches"):
        lines.append("hyperparameters not reproduced: " + "; ".join(report["hparam_mismatches"]))
    lines.append(f"took {report['seconds']['total']:.1f} s")
    return "\n".join(lines)
