"""Parity with MLX: the reference computed once in MLX, the measurement of one GGUF file (or
base + LoRA) against it, the head biases re-calibrated from it, and the targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localguard.cls_token import ClsRule, head_rule, query_spans, teacher_windows
from localguard.export.options import threads_arg
from localguard.parity_texts import PARITY_TEXTS
from localguard.stats import logit_agreement

PARITY_SETTINGS = {"kv_cache": "f32", "flash_attention": False}
TARGETS = {
    "F16": {
        "relative_logit_diff": 0.1,
        "argmax_agreement": 0.98,
        "top5_agreement": 0.95,
        "verdict_agreement": 1.0,
    },
    "Q8_0": {"verdict_agreement": 0.995},
    "Q4_K_M": {"verdict_agreement": 0.98},
}
"""Targets per file type, checked and reported for every export; each means the same on a
3-layer starter model and a 30-layer real one. Over the parity positions (every token of the
parity texts and chats):

- relative_logit_diff (at most): the largest |file - MLX| logit difference at a position
  divided by the standard deviation of MLX's logits over the vocabulary there (the scale the
  softmax sees), the worst position. F16 rounding gave 0.004-0.006 on the demo starter world and
  0.071 on SmolLM2-135M (F16 against F32 of the same weights in llama.cpp; 0.17 absolute),
  Q4_K_M 1.0-1.35 on the demo world. The absolute max_logit_diff is reported beside it.
- argmax_agreement (at least): the share of positions whose most likely token is the same.
- top5_agreement (at least): the mean share of MLX's 5 most likely tokens among the file's 5.
- verdict_agreement (at least): the share of safety verdicts beyond ties (TIE_BAND) that
  agree after the head bias is re-calibrated.
- tokenization, for every type: every parity text (localguard/parity_texts.py, with the
  calibration texts and the rendered chats) tokenizes to the same ids.

Quantized files are held to their verdicts only: Q8_0 already moves SmolLM2-135M's argmax at
6 % of the positions, which the safety verdicts do not feel."""
TIE_BAND = 0.02
"""A unit whose MLX head logit lies within this of the threshold is a tie: its verdict is at
the mercy of float rounding (about the F16 head-logit difference on the starter world), so the
targets are checked on the verdicts outside the band; the strict agreement over all units is
reported beside them."""

PARITY_CHATS = [
    "What is 12 plus 7?",
    "How do I pick a lock?",
    "Write a short poem about the sea.",
]
"""User messages rendered through the chat template (with the generation prompt)."""


@dataclass
class Reference:
    """What the GGUF files are measured against, computed once in MLX."""

    texts: list[str]  # tokenization set: text -> ids with special-token parsing off
    text_ids: list[list[int]]
    chats: list[str]  # rendered chat templates -> ids with special tokens parsed
    chat_ids: list[list[int]]
    sequences: list[list[int]]  # logit parity sequences
    logits: list[np.ndarray]  # (len, n_vocab) MLX logits per sequence
    convs: list = field(default_factory=list)
    traces: list[np.ndarray] = field(default_factory=list)  # (n, K) head logits per conv

    @property
    def n_vocab(self) -> int:
        return int(self.logits[0].shape[1])

    def longest(self) -> int:
        lengths = [len(s) for s in self.sequences] + [len(c.tokens) for c in self.convs]
        return max(lengths)


def mlx_reference(model, tokenizer, head, convs: list) -> Reference:
    """MLX logits on the parity set and head traces on the calibration set."""
    import mlx.core as mx

    from localguard.encoding import encode_text, hf_tokenizer

    texts = list(PARITY_TEXTS)
    for conv in convs[:32]:  # user and reply texts of the calibration set are tokenized too
        texts.append(hf_tokenizer(tokenizer).decode(conv.tokens[conv.start :]))
    text_ids = [encode_text(tokenizer, t) for t in texts]
    chats, chat_ids = [], []
    for message in PARITY_CHATS:
        chat = [{"role": "user", "content": message}]
        rendered = hf_tokenizer(tokenizer).apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
        chats.append(rendered)
        # the rendered string as a whole, as llama.cpp sees it (encode_chat tokenizes each
        # message apart, which differs for SentencePiece's space prefix)
        chat_ids.append(hf_tokenizer(tokenizer)(rendered, add_special_tokens=False)["input_ids"])
    sequences = [ids for ids in text_ids[: len(PARITY_TEXTS)] + chat_ids if ids]
    logits = [np.array(model(mx.array([ids]))[0].astype(mx.float32)) for ids in sequences]
    traces = []
    if head is not None:
        from localguard.backends.mlx.head_train import teacher_traces

        traces = teacher_traces(model, head, convs)
    return Reference(texts, text_ids, chats, chat_ids, sequences, logits, convs, traces)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of equal verdicts (NaN for none)."""
    return float(np.mean(a == b)) if a.size else float("nan")


def measure(
    path: Path,
    ref: Reference,
    head,
    *,
    lora: Path | None = None,
    threads: int = 0,
    progress=None,
) -> dict:
    """Parity of one GGUF file (or base + LoRA) with MLX, and its re-calibrated head biases.

    Returns tokenization equality, the logit figures of logit_agreement, and, with a head: the
    bias shift
    (mean MLX minus file head logit over every calibration position), the biases that
    include it, the largest head-logit difference left after it, and the share of verdicts
    (query at the last prompt token, response at every reply token) that agree with MLX.
    """
    from localguard.backends.llamacpp.gguf_runtime import GGUFModel

    n_ctx = ref.longest() + 8
    with GGUFModel(
        path, lora=lora, n_ctx=n_ctx, n_threads=threads_arg(threads), f32_cache=True
    ) as llm:
        equal = sum(
            llm.tokenize(t, special=False) == ids
            for t, ids in zip(ref.texts, ref.text_ids, strict=True)
        )
        equal += sum(
            llm.tokenize(t, special=True) == ids
            for t, ids in zip(ref.chats, ref.chat_ids, strict=True)
        )
        got = []
        for ids in ref.sequences:
            got.append(llm.eval(ids)[:, : ref.n_vocab])
            if progress:
                progress(1)
        parity = {
            "tokenization": {"equal": int(equal), "total": len(ref.texts) + len(ref.chats)},
            **logit_agreement(np.concatenate(ref.logits), np.concatenate(got)),
        }
        if head is None or llm.head is None:
            return parity
        raw = []
        rule = head_rule(head)
        for conv in ref.convs:
            if rule is None:
                raw.append(llm.head.raw(llm.eval(conv.tokens, first=conv.start - 1)))
            else:
                raw.append(cls_raw(llm, conv, rule))
            if progress:
                progress(1)
    return {**parity, **recalibrate(head, ref.traces, raw)}


def cls_raw(llm, conv, rule: ClsRule) -> np.ndarray:
    """(n + 1, K) head logits without bias of a CLS head in a GGUF file: the verdicts after
    0 .. n reply tokens, with the windows the MLX traces read (the labels')."""
    llm.reset()
    llm.feed(conv.tokens, all_logits=False)
    spans = query_spans(conv)
    columns = np.asarray(llm.head.token_ids, np.intp)
    rows = [
        llm.cls([*spans, (conv.start + int(lo), conv.start + int(hi))], columns)
        for lo, hi in teacher_windows(conv, rule)
    ]
    rows = np.asarray(rows, np.float64)
    return rows if llm.head.scale is None else rows / llm.head.scale


def recalibrate(head, traces: list[np.ndarray], raw: list[np.ndarray]) -> dict:
    """Bias shift, new biases, remaining difference and verdict agreement (see measure)."""
    mlx_all, raw_all = np.concatenate(traces), np.concatenate(raw)
    bias = np.asarray(head.bias, np.float64)
    shift = (mlx_all - raw_all - bias).mean(axis=0)
    new_bias = bias + shift
    file_all = raw_all + new_bias
    thresholds = np.asarray(head.thresholds, np.float64)
    q, r = head.index("query"), head.index("response")
    q_mlx = np.array([t[0, q] for t in traces]) >= thresholds[q]
    q_file = np.array([x[0, q] + new_bias[q] for x in raw]) >= thresholds[q]
    r_mlx = np.concatenate([t[1:, r] for t in traces]) >= thresholds[r]
    r_file = np.concatenate([x[1:, r] + new_bias[r] for x in raw]) >= thresholds[r]
    both_mlx, both_file = np.r_[q_mlx, r_mlx], np.r_[q_file, r_file]
    unshifted = np.r_[
        np.array([x[0, q] + bias[q] for x in raw]) >= thresholds[q],
        np.concatenate([x[1:, r] + bias[r] for x in raw]) >= thresholds[r],
    ]
    margin = np.abs(
        np.r_[[t[0, q] for t in traces], np.concatenate([t[1:, r] for t in traces])]
        - np.r_[np.full(len(traces), thresholds[q]), np.full(r_mlx.size, thresholds[r])]
    )
    clear = margin > TIE_BAND
    return {
        "bias": [float(b) for b in new_bias],
        "bias_shift": [float(s) for s in shift],
        "head_max_diff": [float(d) for d in np.abs(file_all - mlx_all).max(axis=0)],
        "verdict_agreement": {
            "query": agreement(q_mlx, q_file),
            "response": agreement(r_mlx, r_file),
            "all": agreement(both_mlx, both_file),
            "units": int(both_mlx.size),
            "disagree": int((both_mlx != both_file).sum()),
            "ties": int((~clear).sum()),
            "beyond_ties": agreement(both_mlx[clear], both_file[clear]),
            "before_recalibration": agreement(both_mlx, unshifted),
        },
        "calibration_positions": int(mlx_all.shape[0]),
    }


def check_targets(type_name: str, measured: dict) -> dict:
    """The targets for this file type and whether the measured values meet them."""
    wanted = TARGETS.get(type_name, {})
    out = {}
    if "relative_logit_diff" in wanted:
        out["relative_logit_diff"] = {
            "target": wanted["relative_logit_diff"],
            "met": measured["relative_logit_diff"] <= wanted["relative_logit_diff"],
        }
    for name in ("argmax_agreement", "top5_agreement"):
        if name in wanted:
            out[name] = {"target": wanted[name], "met": measured[name] >= wanted[name]}
    if "verdict_agreement" in wanted and "verdict_agreement" in measured:
        value = measured["verdict_agreement"]["beyond_ties"]
        out["verdict_agreement"] = {
            "target": wanted["verdict_agreement"],
            "met": value >= wanted["verdict_agreement"],
        }
    tok = measured["tokenization"]
    out["tokenization"] = {"target": 1.0, "met": tok["equal"] == tok["total"]}
    return out
