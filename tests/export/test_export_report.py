"""The printed parity table of export.json (localguard.export.report)."""

from __future__ import annotations

from localguard.export.report import format_report

HEADER = (
    "file                      tokens max|dlogit| relative  argmax   top-5  verdicts (no ties)"
    "        bias shift      size"
)
AGREEMENT = {
    "query": 1.0,
    "response": 0.99,
    "all": 0.995,
    "units": 200,
    "disagree": 1,
    "ties": 3,
    "beyond_ties": 1.0,
    "before_recalibration": 0.9,
}


def test_format_report_with_a_head() -> None:
    """One line per file (absolute and relative logit difference, argmax and top-5 agreement,
    strict and beyond-ties verdict agreement, bias shift, size in MiB), the calibration set,
    and every missed target by file."""
    met = {"target": 1.0, "met": True}
    report = {
        "calibration": {"source": "cal.jsonl", "conversations": 16},
        "files": [
            {
                "file": "model-F16.gguf",
                "type": "F16",
                "bytes": 3 * 2**20,
                "tokenization": {"equal": 44, "total": 44},
                "max_logit_diff": 0.0123,
                "relative_logit_diff": 0.0041,
                "argmax_agreement": 1.0,
                "top5_agreement": 0.9987,
                "bias": [0.3, -0.4],
                "bias_shift": [0.0012, -0.0345],
                "verdict_agreement": AGREEMENT,
                "targets": {"verdict_agreement": met, "tokenization": met},
            },
            {
                "file": "model-Q4_K_M.gguf",
                "type": "Q4_K_M",
                "bytes": 1234567,
                "tokenization": {"equal": 43, "total": 44},
                "max_logit_diff": 1.5,
                "relative_logit_diff": 0.5,
                "argmax_agreement": 0.875,
                "top5_agreement": 0.9,
                "bias_shift": [0.25, -0.125],
                "verdict_agreement": {**AGREEMENT, "all": 0.9, "beyond_ties": 0.975},
                "targets": {
                    "verdict_agreement": {"target": 0.98, "met": False},
                    "tokenization": {"target": 1.0, "met": False},
                },
            },
        ],
    }
    assert format_report(report) == "\n".join(
        [
            HEADER,
            "model-F16.gguf           44/44        0.0123   0.0041  100.0%   99.9%    99.50%"
            "   100.00%   +0.0012 -0.0345     3.0MB",
            "model-Q4_K_M.gguf        43/44        1.5000   0.5000   87.5%   90.0%    90.00%"
            "    97.50%   +0.2500 -0.1250     1.2MB",
            "verdicts: 200 (query + response, 3 within 0.02 of a threshold) on 16 conversations"
            " from cal.jsonl",
            "targets missed: model-Q4_K_M.gguf verdict_agreement, model-Q4_K_M.gguf tokenization",
        ]
    )


def test_format_report_without_a_head() -> None:
    """No verdicts and no bias shift: dashes, and no calibration line."""
    report = {
        "calibration": {"source": None, "conversations": 0},
        "files": [
            {
                "file": "lora.gguf",
                "type": "LoRA",
                "bytes": 524288,
                "on": "base.gguf",
                "tokenization": {"equal": 12, "total": 12},
                "max_logit_diff": 0.004,
                "relative_logit_diff": 0.002,
                "argmax_agreement": 1.0,
                "top5_agreement": 1.0,
                "targets": {"tokenization": {"target": 1.0, "met": True}},
            }
        ],
    }
    assert format_report(report) == "\n".join(
        [
            HEADER,
            "lora.gguf                12/12        0.0040   0.0020  100.0%  100.0%         -"
            "         -                 -     0.5MB",
            "targets: met",
        ]
    )
