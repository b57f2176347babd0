"""CLS mode: the safety verdict read from a dedicated control token with rule-bound attention.

The design of "Safety Alignment Can Be Not Superficial With Explicit Safety Signals" (Li and
Kim, ICML 2025). Stream mode reads the verdict from the state the LM head already computes; CLS
mode adds one learned input vector, the [CLS] token, whose final state the head's rows classify.
The CLS token reads the user's query and a window of the generated tokens chosen by rule, and no
other token ever reads it, so the LM's own computation is that of the plain model (with its
LoRA). This file is numpy only: the rule and the attention mask it makes. The MLX side (two
passes through the model, training) is backends/mlx/head_train.py.

What the paper leaves open, and where each choice comes from in the authors' code
(github.com/JEKimLab/Safety-Alignment-With-Explicit-Safety-Signal):

- The window rule (ClsRule, window): after a malicious first verdict the CLS token reads the
  first r1 generated tokens; while the verdicts are benign, the last r2; once a verdict turns
  malicious at turning point S, the tokens S - r2 .. S + r3. Defaults r1 = 5, r2 = 15, r3 = 10:
  the values every one of the authors' generation scripts sets (generation_mistral_cls.py,
  safety_evaluation/*: os.environ r1, r2, r3).
- Template tokens skipped: the query is the user's own text, without the chat template around
  it (lima_dataset.py __getitem__: positions [start_idx_input, end_idx_input] are computed past
  the template's tokens and exclude BOS). localguard takes every user message's text
  (encoding.user_spans); a conversation without message spans (task data in prompt/completion
  form) reads its whole prompt.
- Nothing attends to the CLS token, and it attends to itself (the authors' strategic attention
  masks the other tokens' column of the CLS token; the diagonal is its own state).
- Labels: the verdict's label is the query's (lima_dataset.py: labels[0] = 1 for a malicious
  query). localguard keeps its two outputs: the query row, labeled with the query label at every
  verdict, and the response row, labeled with the response labels (conversations.py). The
  authors train one CLS per example (the reply window is the whole reply after a benign query,
  its first token after a malicious one); localguard trains the verdict after every prefix of
  the reply, each with the window the rule gives it when the verdicts so far equal the labels
  (the first verdict is the query label, the turning point is the onset), so training sees the
  windows generation uses.
- The CLS token's input vector starts as the mean of the input embeddings, what transformers'
  resize_token_embeddings gives the token the authors add with add_special_tokens({'cls_token':
  '[CLS]'}); it is trained with the LoRA and the head (loss = SFT + gamma * CE, the CE being
  the head's binary cross-entropy, as in stream mode).
- Position: the authors put the CLS token at index 0, shifting every other token by one. Here
  the verdict after t reply tokens sits at position start + t, the one the next token takes, and
  is computed over the tokens' keys without entering them, so the LM's positions are those of
  plain inference and generation can reuse its KV cache for each verdict.
- Decoding thresholds: cls_logit_boundary 0.5 and consucultive_unsafe_tao (1 to 5 in the
  scripts) are the Guard's calibrated threshold and tau; the re-classification schedule
  (dynamic_reclassification_strategy: each, first, periodic, annealing) is a generation option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from localguard.conversations import Conversation
from localguard.recipe import schema_field


@dataclass(frozen=True)
class ClsRule:
    """The attention windows in generated tokens (see the module docstring)."""

    r1: int = schema_field("head", "r1")
    r2: int = schema_field("head", "r2")
    r3: int = schema_field("head", "r3")

    def describe(self) -> dict:
        return asdict(self)


def window(t: int, first_malicious: bool, turn: int | None, rule: ClsRule) -> tuple[int, int]:
    """Reply tokens [lo, hi) the verdict after t reply tokens reads: the first r1 after a
    malicious first verdict; S - r2 .. S + r3 once a verdict turned malicious at reply token S
    (turn); else the last r2."""
    if first_malicious:
        return 0, min(t, rule.r1)
    if turn is not None and t > turn:
        return max(0, turn - rule.r2), min(t, turn + rule.r3 + 1)
    return max(0, t - rule.r2), t


def teacher_windows(conv: Conversation, rule: ClsRule) -> np.ndarray:
    """(n + 1, 2) windows of the verdicts after 0..n reply tokens when the verdicts so far are
    the labels: the first is the query label, the turning point the onset."""
    n = len(conv.tokens) - conv.start
    turn = conv.onset - conv.start if conv.onset >= 0 else None
    return np.array([window(t, conv.query == 1, turn, rule) for t in range(n + 1)], np.int64)


def query_columns(conv: Conversation) -> np.ndarray:
    """Token positions of the query: the user's text, or the whole prompt without spans."""
    spans = conv.query_spans or ((0, conv.start),)
    return np.concatenate([np.arange(a, b) for a, b in spans]).astype(np.int64)


def cls_mask(conv: Conversation, rule: ClsRule, width: int, rows: int) -> np.ndarray:
    """(rows, width + rows) boolean mask of CLS verdict rows over [tokens (padded to width),
    CLS rows]: row t (the verdict after t reply tokens) reads the query, its window of reply
    tokens and itself; rows past the conversation's last verdict read only themselves."""
    mask = np.zeros((rows, width + rows), bool)
    mask[np.arange(rows), width + np.arange(rows)] = True
    query = query_columns(conv)
    for t, (lo, hi) in enumerate(teacher_windows(conv, rule)[:rows]):
        mask[t, query] = True
        mask[t, conv.start + lo : conv.start + hi] = True
    return mask


def verdict_count(conv: Conversation) -> int:
    """Verdicts of one conversation: after the prompt and after each reply token."""
    return len(conv.tokens) - conv.start + 1


def head_rule(head) -> ClsRule | None:
    """A CLS head's rule (head.json's "cls" settings); None for a stream or probe head."""
    if head.cls is None:
        return None
    return ClsRule(**head.metadata.get("cls", {}))
