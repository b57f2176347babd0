"""The printed form of export.json: one parity line per file, then the calibration set and the
targets.

Per file: tokenization, the largest logit difference (absolute, and relative to the spread of
MLX's logits), argmax and top-5 agreement, verdict agreement (all, and beyond ties), the
re-calibrated bias shift and the size."""

from __future__ import annotations

from localguard.export.parity import TIE_BAND


def format_report(report: dict) -> str:
    """The parity table of export.json, one line per file."""
    lines = [
        f"{'file':<22} {'tokens':>9} {'max|dlogit|':>11} {'relative':>8} {'argmax':>7} "
        f"{'top-5':>7} {'verdicts':>9} {'(no ties)':>9} {'bias shift':>17} {'size':>9}"
    ]
    for f in report["files"]:
        tok = f["tokenization"]
        agree = f.get("verdict_agreement") or {}
        strict, clear = agree.get("all"), agree.get("beyond_ties")
        shift = f.get("bias_shift")
        lines.append(
            f"{f['file']:<22} {tok['equal']:>4}/{tok['total']:<4} {f['max_logit_diff']:>11.4f} "
            f"{f['relative_logit_diff']:>8.4f} {f['argmax_agreement']:>7.1%} "
            f"{f['top5_agreement']:>7.1%} "
            f"{(f'{strict:.2%}' if strict is not None else '-'):>9} "
            f"{(f'{clear:.2%}' if clear is not None else '-'):>9} "
            f"{(' '.join(f'{v:+.4f}' for v in shift) if shift else '-'):>17} "
            f"{f['bytes'] / 2**20:>7.1f}MB"
        )
    cal = report["calibration"]
    if cal["source"]:
        agree = report["files"][0].get("verdict_agreement") or {}
        lines.append(
            f"verdicts: {agree.get('units', 0)} (query + response, {agree.get('ties', 0)} within "
            f"{TIE_BAND} of a threshold) on {cal['conversations']} conversations from "
            f"{cal['source']}"
        )
    for f in report["files"]:
        if f.get("fallback_tensors"):
            lines.append(
                f"{f['file']}: {len(f['fallback_tensors'])} of {sum(f['tensor_types'].values())} "
                f"tensors took another type (rows not a multiple of {f['type']}'s block): "
                + ", ".join(f"{t} {n}" for t, n in f["tensor_types"].items())
            )
    missed = [
        f"{f['file']} {name}"
        for f in report["files"]
        for name, check in f["targets"].items()
        if not check["met"]
    ]
    lines.append("targets: met" if not missed else f"targets missed: {', '.join(missed)}")
    return "\n".join(lines)
