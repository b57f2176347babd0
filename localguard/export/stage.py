"""The export stage: a fine-tuned MLX model with its safety head as GGUF files.

Steps:
1. load the base with its adapter in mlx-lm and record the reference: logits on a fixed text
   set, and the head's logits on a calibration set of conversations;
2. fuse the adapter into a full-precision copy of the base (a quantized base is dequantized),
   keeping the base's original tokenizer files;
3. convert to model-F16.gguf with localguard's converter, the head's rows appended to the
   output matrix (to the shared embedding of a tied model), a CLS head's token after them
   (its input embedding row the CLS vector), its bias, thresholds and the guard's settings
   as GGUF metadata (localguard.backends.llamacpp.gguf_keys), the base's
   provenance (licence, name, base models ...; an imported GGUF's own) as llama.cpp writes it;
4. quantize with llama.cpp (output and embedding tensors at Q8_0 by default);
5. per file: tokenization equality, maximum logit difference and safety-verdict agreement
   against MLX, and the head biases re-calibrated (mean MLX-minus-file head logit over the
   calibration positions), written into that file's metadata;
6. export.json with the parity report.

Every file is written under a temporary name and renamed once it is complete and
re-calibrated; an interrupted export leaves nothing under a final name. --lora-only writes the
adapter as a llama.cpp LoRA instead (localguard.backends.llamacpp.lora_gguf).

Each path returns its sections of the report (its file entries among them); export() alone
assembles export.json.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from localguard import __version__, runs
from localguard.backends.llamacpp import gguf_keys as keys
from localguard.cls_token import head_rule
from localguard.errors import InputError
from localguard.export.inputs import (
    Inputs,
    calibration_conversations,
    check_lora_only,
    read_architecture,
    resolve_inputs,
)
from localguard.export.options import ExportOptions, quant_types, threads_arg
from localguard.export.parity import (
    PARITY_SETTINGS,
    Reference,
    check_targets,
    measure,
    mlx_reference,
)
from localguard.files import temporary_name, write_json

EXPORT_FILE = "export.json"
F16_FILE = "model-F16.gguf"
LORA_FILE = "lora.gguf"
CLS_ROW = "cls"


def export(opts: ExportOptions) -> dict:
    """Run the export into opts.out; returns the report that export.json holds."""
    from localguard.backends.mlx import fuse

    started = time.perf_counter()
    quants = quant_types(opts.quant)
    inputs = resolve_inputs(opts)
    if opts.lora_only:
        check_lora_only(inputs)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_FILE).unlink(missing_ok=True)  # an older report must not outlive its files
    model, tokenizer, _config = fuse.load(inputs.model, inputs.adapter)
    quantized = fuse.is_quantized(model)
    convs, cal_source = ([], None)
    if inputs.head is not None:
        convs, cal_source = calibration_conversations(opts, tokenizer, inputs.head)
    ref = mlx_reference(model, tokenizer, inputs.head, convs)
    report = {
        "kind": "export",
        "localguard": __version__,
        "options": opts.describe(),
        "model": str(inputs.model),
        "adapter": {
            "path": str(inputs.adapter) if inputs.adapter else None,
            "source": inputs.adapter_source,
            "superseded": str(inputs.superseded) if inputs.superseded else None,
        },
        "head": _head_summary(inputs.head),
        "guard": {"tau": opts.tau, "refusal_prefix": opts.refusal_prefix},
        "calibration": {"source": cal_source, "conversations": len(convs)},
        "parity": {
            **PARITY_SETTINGS,
            "texts": len(ref.texts) + len(ref.chats),
            "sequences": len(ref.sequences),
        },
        "files": [],  # filled below, in this place
    }
    if opts.lora_only:
        del model
        sections = _export_lora(opts, inputs, ref, quantized, out)
    else:
        sections = _export_full(opts, inputs, ref, model, quantized, quants, out)
    report.update(sections)
    report["targets_met"] = all(
        check["met"] for f in report["files"] for check in f["targets"].values()
    )
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / EXPORT_FILE, report)
    return report


def _head_summary(head) -> dict | None:
    if head is None:
        return None
    return {
        "path": head.metadata.get("path"),
        "names": list(head.names),
        "bias": [float(b) for b in head.bias],
        "thresholds": [float(t) for t in head.thresholds],
        "mode": head.metadata.get("mode"),
    }


def head_metadata(head, opts: ExportOptions) -> dict:
    """The guard's and the head's metadata besides names/token ids/bias (which the converter
    writes)."""
    meta = {
        keys.VERSION: __version__,
        keys.GUARD_TAU: int(opts.tau),
        keys.GUARD_REFUSAL_PREFIX: str(opts.refusal_prefix),
    }
    if head is not None:
        k = len(head.names)
        meta[keys.HEAD_THRESHOLDS] = [float(t) for t in head.thresholds]
        meta[keys.HEAD_BIAS_SHIFT] = [0.0] * k
        meta[keys.HEAD_SCALE] = [float(keys.HEAD_ROW_SCALE)] * k
        meta[keys.HEAD_MODE] = str(head.metadata.get("mode", "unknown"))
        rule = head_rule(head)
        if rule is not None:
            meta[keys.HEAD_CLS_RULE] = [rule.r1, rule.r2, rule.r3]
    return meta


def _export_full(
    opts: ExportOptions,
    inputs: Inputs,
    ref: Reference,
    model,
    quantized: bool,
    quants: list[str],
    out: Path,
) -> dict:
    """F16 and one file per quantization type; returns the report's "fused", "converter" and
    "files" sections."""
    from localguard.backends.llamacpp.convert import ExtraRow, convert_to_gguf
    from localguard.backends.llamacpp.quantize import quantize, tensor_report
    from localguard.backends.mlx import fuse

    head = inputs.head
    source = inputs.model
    work = out / f".fused-{os.getpid()}"
    temporaries: list[Path] = []
    files = []
    try:
        fused = None
        if inputs.adapter is not None or quantized:
            layers = fuse.fuse_adapters(model)
            source = fuse.save_fused(model, inputs.model, work)
            fused = {"layers": len(layers), "dequantized": quantized}
        del model
        rows = []
        if head is not None:
            rows = [
                ExtraRow(n, head.weight[k] * keys.HEAD_ROW_SCALE, float(head.bias[k]))
                for k, n in enumerate(head.names)
            ]
            if head.cls is not None:  # the CLS token: its input row, exact (never sampled)
                rows.append(ExtraRow(CLS_ROW, np.asarray(head.cls, np.float32), fed=True))
        f16 = out / F16_FILE
        tmp = temporary_name(f16)
        temporaries.append(tmp)
        bar = _Bar("convert F16")
        try:
            info = convert_to_gguf(
                source,
                tmp,
                rows,
                outtype="f16",
                progress=bar,
                metadata=head_metadata(head, opts),
                card_dir=inputs.model,  # a fused copy is named and described by its base
            )
        finally:
            bar.close()
        converter = {k: v for k, v in info.items() if k != "path"}
        measured = _measured(tmp, ref, head, "measure F16", opts)
        _finish_file(tmp, f16, measured)
        files.append(_file_entry(f16, "F16", measured, tensor_report(f16, "F16")))
        for name in quants:
            final = out / f"model-{name}.gguf"
            tmp = temporary_name(final)
            temporaries.append(tmp)
            with runs.progress_bar(1, f"quantize {name}") as bar:
                qinfo = quantize(
                    f16,
                    tmp,
                    name,
                    vocab_type="Q8_0" if opts.keep_output_q8 else None,
                    threads=threads_arg(opts.threads),
                )
                bar.update(1)
            measured = _measured(tmp, ref, head, f"measure {name}", opts)
            _finish_file(tmp, final, measured)
            files.append(_file_entry(final, name, measured, qinfo))
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"fused": fused, "converter": converter, "files": files}


def _file_entry(path: Path, type_name: str, measured: dict, tensors: dict) -> dict:
    """The report's entry for one finished model file."""
    return {
        "file": path.name,
        "type": type_name,
        "bytes": path.stat().st_size,
        **{k: tensors[k] for k in ("tensor_types", "vocab_tensors", "fallback_tensors")},
        **measured,
        "targets": check_targets(type_name, measured),
    }


def _export_lora(
    opts: ExportOptions, inputs: Inputs, ref: Reference, quantized: bool, out: Path
) -> dict:
    """The adapter as lora.gguf, measured on --base-gguf (or on a temporary F16 conversion of
    the base), the head as an output-row delta on unused token rows of an untied base;
    returns the report's "lora" and "files" sections."""
    from localguard.backends.llamacpp import lora_gguf
    from localguard.backends.llamacpp.convert import convert_to_gguf

    head = inputs.head
    final = out / LORA_FILE
    tmp = temporary_name(final)
    base_tmp = out / f".base-{os.getpid()}.gguf"
    try:
        if opts.base_gguf is not None:
            base = Path(opts.base_gguf)
            base_label = str(base)
        elif quantized:
            raise InputError(
                "--lora-only on a quantized MLX base needs --base-gguf (the GGUF base the "
                "LoRA will run on)"
            )
        else:
            bar = _Bar("convert base")
            try:
                convert_to_gguf(inputs.model, base_tmp, outtype="f16", progress=bar)
            finally:
                bar.close()
            base, base_label = base_tmp, f"temporary F16 conversion of {inputs.model}"
        info = lora_gguf.base_info(base)
        if info["architecture"] != read_architecture(inputs.model):
            raise InputError(
                f"{base_label} is a {info['architecture']} model, not "
                f"{read_architecture(inputs.model)} like {inputs.model}"
            )
        delta = None
        meta = head_metadata(head, opts)
        if head is not None:
            if not info["has_output"]:
                raise InputError(f"{base_label} has no output matrix of its own (tied)")
            ids = lora_gguf.unused_token_ids(info["token_types"], len(head.names))
            base_rows = lora_gguf.output_rows(base, ids)
            weight = np.asarray(head.weight, np.float32) * keys.HEAD_ROW_SCALE
            delta = lora_gguf.HeadDelta(
                list(head.names), ids, weight, base_rows, info["output_shape"][0]
            )
            meta[keys.HEAD_NAMES] = list(head.names)
            meta[keys.HEAD_TOKEN_IDS] = [int(i) for i in ids]
            meta[keys.HEAD_BIAS] = [float(b) for b in head.bias]
        summary = lora_gguf.write_lora_gguf(
            inputs.model, inputs.adapter, tmp, head=delta, metadata=meta
        )
        lora = {**{k: v for k, v in summary.items() if k != "path"}, "base": base_label}
        measured = _measured(base, ref, head, "measure LoRA", opts, lora=tmp)
        _finish_file(tmp, final, measured)
        entry = {
            "file": final.name,
            "type": "LoRA",
            "bytes": final.stat().st_size,
            "on": base_label,
            **measured,
            "targets": check_targets("LoRA", measured),
        }
    finally:
        tmp.unlink(missing_ok=True)
        base_tmp.unlink(missing_ok=True)
    return {"lora": lora, "files": [entry]}


def _measured(path: Path, ref: Reference, head, label: str, opts: ExportOptions, **kw) -> dict:
    """measure() with a progress bar."""
    steps = len(ref.sequences) + (len(ref.convs) if head is not None else 0)
    with runs.progress_bar(steps, label) as bar:
        return measure(path, ref, head, threads=opts.threads, progress=bar.update, **kw)


def _finish_file(tmp: Path, final: Path, measured: dict) -> None:
    """Write the re-calibrated biases into the finished file, then give it its final name."""
    from localguard.backends.llamacpp.gguf_runtime import patch_metadata

    if "bias" in measured:
        patch_metadata(
            tmp, {keys.HEAD_BIAS: measured["bias"], keys.HEAD_BIAS_SHIFT: measured["bias_shift"]}
        )
    os.replace(tmp, final)


class _Bar:
    """A progress bar opened on the first update (the converter reports its total then)."""

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.done = label, None, 0

    def __call__(self, done: int, total: int, _name: str = "") -> None:
        if self.bar is None:
            self.bar = runs.progress_bar(total, self.label).__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
