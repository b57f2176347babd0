"""Parity with MLX (localguard.export.parity): exported files read by stock llama.cpp against
mlx-lm running the base with the adapter, and the re-calibration and targets on known values.

The head's rows are stored at gguf_keys.HEAD_ROW_SCALE; the bias lives in the metadata.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from export_cases import (
    CASES,
    F16_TOLERANCE,
    GEMMA3_F16_TOLERANCE,
    PROMPT,
    gguf_tensors,
    mlx_with_head,
    stock_logits,
)

from localguard.export.parity import (
    TARGETS,
    TIE_BAND,
    agreement,
    check_targets,
    recalibrate,
)
from localguard.safety_head import SafetyHead


@pytest.mark.parametrize("case", CASES)
def test_export_matches_mlx(case: str, case_inputs, exported) -> None:
    """Tokens, logits and head logits of the F16 file, read by stock llama.cpp, against mlx-lm
    running the base with the adapter; tied models carry the rows in the embedding."""
    import mlx.core as mx  # the fixtures skip without it

    from localguard.backends.llamacpp.gguf_runtime import read_head
    from localguard.encoding import encode_text

    model_dir, head_dir = case_inputs(case)
    report, out = exported(case)
    names = sorted(p.name for p in out.iterdir())
    expected = ["export.json", "model-F16.gguf", "model-Q8_0.gguf"]
    assert names == sorted(expected + (["model-Q4_K_M.gguf"] if case == "qwen3" else []))
    assert json.loads((out / "export.json").read_text())["files"] == report["files"]
    assert report["adapter"]["source"] == "head" and report["fused"]["layers"] > 0

    model, tokenizer, head = mlx_with_head(model_dir, head_dir)
    config = json.loads((model_dir / "config.json").read_text())
    n_vocab = config["vocab_size"]
    ids = encode_text(tokenizer, PROMPT)
    f16 = out / "model-F16.gguf"
    got = stock_logits(f16, ids)
    want = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    tolerance = GEMMA3_F16_TOLERANCE if case.startswith("gemma3") else F16_TOLERANCE
    assert got.shape == (len(ids), n_vocab + 2)
    assert np.abs(got[:, :n_vocab] - want).max() < tolerance

    spec = read_head(f16)
    assert spec.token_ids == [n_vocab, n_vocab + 1]
    hidden = np.array(model.model(mx.array([ids]))[0].astype(mx.float32))
    mlx_head = head.logits(hidden)
    assert np.abs(spec.logits(got) - mlx_head).max() < 2 * tolerance

    tensors = gguf_tensors(f16)
    rows = "token_embd.weight" if config["tie_word_embeddings"] else "output.weight"
    assert ("output.weight" in tensors) == (not config["tie_word_embeddings"])
    assert tensors[rows][0] == (config["hidden_size"], n_vocab + 2)
    for entry in report["files"]:
        assert entry["tokenization"]["equal"] == entry["tokenization"]["total"]
        assert entry["verdict_agreement"]["units"] > 16
    f16_entry = report["files"][0]
    assert f16_entry["max_logit_diff"] < tolerance
    # the scale-free targets hold on every architecture, gemma3's F16 GELU table included
    assert all(check["met"] for check in f16_entry["targets"].values()), f16_entry["targets"]
    if not case.startswith("gemma3"):
        assert f16_entry["verdict_agreement"]["beyond_ties"] == 1.0


def test_recalibrate_on_known_head_logits() -> None:
    """A file whose raw head logits are off by a constant per output: the shift is that
    constant, the re-calibrated file agrees everywhere, a verdict within TIE_BAND of its
    threshold counts as a tie, and the agreement before the shift is reported beside it."""
    head = SafetyHead(
        ["query", "response"],
        np.zeros((2, 4), np.float32),
        np.array([0.25, -0.5], np.float32),
        np.array([0.0, 0.3]),
    )
    # MLX head logits per conversation: row 0 is the query verdict, rows 1.. the response's
    traces = [
        np.array([[0.05, 9.0], [-1.0, 0.31], [-1.0, 1.0]]),
        np.array([[-2.0, 0.0], [0.0, -1.0]]),
    ]
    offset = np.array([0.1, -0.2])
    raw = [t - np.asarray(head.bias, np.float64) - offset for t in traces]
    result = recalibrate(head, traces, raw)
    assert list(result) == [
        "bias",
        "bias_shift",
        "head_max_diff",
        "verdict_agreement",
        "calibration_positions",
    ]
    np.testing.assert_allclose(result["bias_shift"], offset, atol=1e-12)
    np.testing.assert_allclose(
        result["bias"], np.asarray(head.bias, np.float64) + offset, atol=1e-7
    )
    assert max(result["head_max_diff"]) < 1e-12
    assert result["calibration_positions"] == 5
    assert 0.31 - 0.3 <= TIE_BAND < 0.05
    assert result["verdict_agreement"] == {
        "query": 1.0,
        "response": 1.0,
        "all": 1.0,
        "units": 5,  # 2 queries + 3 response tokens
        "disagree": 0,
        "ties": 1,  # the response at 0.31 against 0.3
        "beyond_ties": 1.0,
        "before_recalibration": 0.8,  # the query at 0.05 falls below 0 without the shift
    }


def test_agreement() -> None:
    assert agreement(np.array([True, False]), np.array([True, True])) == 0.5
    assert np.isnan(agreement(np.array([], bool), np.array([], bool)))


def test_targets_are_scale_free() -> None:
    """The F16 targets name no absolute logit difference (it depends on the model's depth and
    logit scale), only relative and rank figures and the verdicts."""
    assert "max_logit_diff" not in TARGETS["F16"]
    assert set(TARGETS["F16"]) == {
        "relative_logit_diff",
        "argmax_agreement",
        "top5_agreement",
        "verdict_agreement",
    }


def test_check_targets() -> None:
    tokens = {"equal": 5, "total": 5}
    f16 = {
        "max_logit_diff": 0.03,
        "relative_logit_diff": 0.2,
        "argmax_agreement": 0.99,
        "top5_agreement": 0.9,
        "tokenization": tokens,
        "verdict_agreement": {"beyond_ties": 1.0},
    }
    assert check_targets("F16", f16) == {
        "relative_logit_diff": {"target": 0.1, "met": False},
        "argmax_agreement": {"target": 0.98, "met": True},
        "top5_agreement": {"target": 0.95, "met": False},
        "verdict_agreement": {"target": 1.0, "met": True},
        "tokenization": {"target": 1.0, "met": True},
    }
    good = {**f16, "relative_logit_diff": 0.1, "argmax_agreement": 0.98, "top5_agreement": 0.95}
    assert all(check["met"] for check in check_targets("F16", good).values())
    q4 = {"max_logit_diff": 2.0, "tokenization": tokens, "verdict_agreement": {"beyond_ties": 0.97}}
    assert check_targets("Q4_K_M", q4) == {
        "verdict_agreement": {"target": 0.98, "met": False},
        "tokenization": {"target": 1.0, "met": True},
    }
    headless = {"max_logit_diff": 0.1, "tokenization": {"equal": 4, "total": 5}}
    assert check_targets("Q8_0", headless) == {"tokenization": {"target": 1.0, "met": False}}
    assert check_targets("LoRA", f16) == {"tokenization": {"target": 1.0, "met": True}}
