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
  a verdict sits right after the newest token it reads (row_positions), and is computed over
  the tokens' keys without entering them, so the LM's positions are those of plain inference
  and generation reuses its KV cache for each verdict. llama.cpp asks as much: a sequence's
  next position follows its last cell, so a CLS step there is a sequence holding the query
  and window cells, whose next position is the one after the newest of them.
- Decoding thresholds: cls_logit_boundary 0.5 and consucultive_unsafe_tao (1 to 5 in the
  scripts) are the Guard's calibrated threshold and tau; the re-classification schedule
  (dynamic_reclassification_strategy: each, first, periodic, annealing) is a generation option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from localguard.conversations import Conversation
from localguard.errors import InputError
from localguard.recipe import SCHEMA, schema_field


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


def query_spans(conv: Conversation) -> list[tuple[int, int]]:
    """[first, end) token ranges of the query: the user's text, or the whole prompt without
    spans."""
    return [(int(a), int(b)) for a, b in conv.query_spans] or [(0, conv.start)]


def query_columns(conv: Conversation) -> np.ndarray:
    """Token positions of the query (query_spans)."""
    return np.concatenate([np.arange(a, b) for a, b in query_spans(conv)]).astype(np.int64)


def row_positions(query: np.ndarray, start: int, windows: np.ndarray) -> np.ndarray:
    """(rows,) positions of the verdicts with these windows: one past the newest token each
    reads (the query's last token when its window is empty)."""
    lo, hi = np.asarray(windows, np.int64).reshape(-1, 2).T
    return np.where(hi > lo, start + hi, int(np.max(query)) + 1).astype(np.int64)


def rows_mask(
    query: np.ndarray, start: int, windows: np.ndarray, width: int, rows: int
) -> np.ndarray:
    """(rows, width + rows) boolean mask of CLS rows over [tokens (padded to width), CLS rows]:
    row i reads the query positions, reply tokens windows[i] and itself; rows past the
    windows read only themselves."""
    mask = np.zeros((rows, width + rows), bool)
    mask[np.arange(rows), width + np.arange(rows)] = True
    for i, (lo, hi) in enumerate(windows[:rows]):
        mask[i, query] = True
        mask[i, start + lo : start + hi] = True
    return mask


def cls_mask(
    conv: Conversation, rule: ClsRule, width: int, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """rows_mask and row_positions (padded to rows) of a conversation's verdicts after 0, 1,
    .. reply tokens (teacher_windows)."""
    windows, query = teacher_windows(conv, rule), query_columns(conv)
    positions = row_positions(query, conv.start, windows)
    padded = np.pad(positions[:rows], (0, max(0, rows - len(positions))), mode="edge")
    return rows_mask(query, conv.start, windows, width, rows), padded


def verdict_count(conv: Conversation) -> int:
    """Verdicts of one conversation: after the prompt and after each reply token."""
    return len(conv.tokens) - conv.start + 1


def head_rule(head) -> ClsRule | None:
    """A CLS head's rule (head.json's "cls" settings); None for a stream or probe head."""
    if head.cls is None:
        return None
    return ClsRule(**head.metadata.get("cls", {}))


# --- generation: the re-classification schedule and the rule's live state -------------------

SCHEDULES = SCHEMA["guard"]["cls_schedule"].choices


def due(t: int, schedule: str, period: int) -> bool:
    """Whether the verdict after t reply tokens is taken (t = 0, the query's, always is).

    every: each step (the authors' "each"); periodic: every `period` steps; annealed: often
    early, rarely late, a check at t being followed by one 1 + t // period steps later; first:
    the query's verdict alone. The authors name the same four (question_inference.py:
    dynamic_reclassification_strategy = each, first, periodic, annealing) but their period and
    annealing curve live outside the released code."""
    if t == 0 or schedule == "every":
        return True
    if schedule == "first":
        return False
    if schedule == "periodic":
        return t % period == 0
    check = 0
    while check < t:
        check += 1 + check // period
    return check == t


def check_schedule(schedule: str, period: int) -> None:
    """A re-classification schedule a backend can run, else one InputError."""
    if schedule not in SCHEDULES or period < 1:
        raise InputError(
            f"the CLS schedule must be one of {', '.join(SCHEDULES)} with a period of at "
            f"least 1, not {schedule!r} every {period}"
        )


def prompt_spans(
    prompt: Sequence[int], recorded: tuple[tuple[int, ...], list] | None
) -> list[tuple[int, int]]:
    """The query of a prompt feed: the user-text spans recorded when this very prompt was
    encoded (encode_chat), else the whole prompt."""
    spans = recorded[1] if recorded and recorded[0] == tuple(prompt) else []
    return [(int(a), int(b)) for a, b in spans] or [(0, len(prompt))]


@dataclass
class LiveVerdicts:
    """The rule's state while a reply is generated: the verdicts so far decide the windows.

    The first verdict is malicious when its query logit reaches the query threshold; the
    turning point is the newest token read by the first re-check whose response logit reaches
    the response threshold (the head's calibrated thresholds: the authors' cls_logit_boundary).
    Between re-checks a token carries the last verdict, so the Guard's tau counts tokens as in
    stream mode."""

    rule: ClsRule
    spans: list[tuple[int, int]]  # the query's [first, end) token ranges
    start: int  # first reply token's position
    outputs: tuple[int, int]  # (query, response) row indices of the head
    thresholds: tuple[float, float]  # theirs, in logit units
    schedule: str = "every"
    period: int = 1
    first_malicious: bool = False
    turn: int | None = None
    last: np.ndarray | None = None  # the last verdict's logits

    @property
    def query(self) -> np.ndarray:
        """The query's token positions."""
        return np.concatenate([np.arange(a, b) for a, b in self.spans]).astype(np.int64)

    def windows(self, first: int, count: int) -> np.ndarray:
        """(count, 2) windows of the verdicts after first .. first + count - 1 reply tokens."""
        return np.array(
            [
                window(t, self.first_malicious, self.turn, self.rule)
                for t in range(first, first + count)
            ],
            np.int64,
        ).reshape(count, 2)

    def wants(self, t: int) -> bool:
        """Whether the verdict after t reply tokens is computed (else the last one stands)."""
        return self.last is None or due(t, self.schedule, self.period)

    def take(self, t: int, logits: np.ndarray | None) -> np.ndarray:
        """The verdict after t reply tokens: logits when it is wanted (the state follows
        them), else the last one again."""
        if not self.wants(t):
            return self.last
        q, r = self.outputs
        if t == 0:
            self.first_malicious = bool(logits[q] >= self.thresholds[0])
        elif self.turn is None and not self.first_malicious and logits[r] >= self.thresholds[1]:
            self.turn = t - 1
        self.last = np.asarray(logits)
        return self.last

    def rewind(self, reply_length: int) -> None:
        """Tokens from reply_length on are gone: so is a turning point among them."""
        if self.turn is not None and self.turn >= reply_length:
            self.turn = None


class ClsState:
    """What a backend's CLS reader keeps between feeds: the head's rule, its query and response
    outputs and thresholds, the schedule, the query spans encode_chat recorded (prompt) and the
    live verdicts of the reply being generated (begin makes them for a prompt feed)."""

    def __init__(self, head, rule: ClsRule, schedule: str, period: int) -> None:
        """head: a SafetyHead or a GGUF HeadSpec (index(name), thresholds)."""
        check_schedule(schedule, period)
        q, r = head.index("query"), head.index("response")
        self.rule, self.schedule, self.period = rule, schedule, period
        self.outputs = (q, r)
        self.thresholds = (float(head.thresholds[q]), float(head.thresholds[r]))
        self.live: LiveVerdicts | None = None
        self.prompt: tuple[tuple[int, ...], list] | None = None

    def begin(self, prompt: Sequence[int]) -> None:
        """The prompt's state: its query spans, the reply starting after it."""
        self.live = LiveVerdicts(
            self.rule,
            prompt_spans(prompt, self.prompt),
            len(prompt),
            self.outputs,
            self.thresholds,
            self.schedule,
            self.period,
        )
