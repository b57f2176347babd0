"""The Guard: guarded decoding with the safety head, written once for every backend.

It drives a GuardBackend (localguard/backends/base.py) token by token and sees only numpy:

- query verdict at the last prompt token: if unsafe, the refusal prefix is forced as the start
  of the reply and the model writes its own reason (a forced assistant start, the "prefill",
  is then never fed);
- response verdict at every reply token: `tau` consecutive unsafe verdicts rewind the reply and
  the KV cache to the turning point (the first token of that run), force the refusal prefix
  there and go on; after `max_interventions` refusals a further one ends the reply at the
  turning point instead. With `window` > tau, tau unsafe verdicts among the last `window`
  tokens are enough (a safe verdict between unsafe ones does not reset the count), and the
  turning point is the first unsafe token among them; window = tau (the default) is the
  consecutive rule;
- held-back streaming: a token reaches the user (`on_text`) only once `tau` further verdicts
  are in, and never while it could still be a turning point, so no token that a rewind
  removes is ever shown; the forced prefix shows at once;
- the safety rows are masked to -inf after any logit bias, so they are never sampled;
- modes: "on"; "monitor" scores and records what it would do but never intervenes; "off"
  neither acts nor records (the rows stay masked all the same).

Thresholds (logit units), tau and the refusal prefix come from the model's head (head.json or
GGUF metadata) unless the settings override them. Every intervention is recorded with its
decoding step, turning point, scores and action. A reply that ends inside an unsafe run
shorter than tau keeps it: the guard acts on tau verdicts, and at the token limit it decodes
up to `window` hidden tokens more to settle a run that began inside the limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from localguard.backends.base import GuardBackend, HeadInfo, Sampling
from localguard.errors import InputError
from localguard.recipe import default
from localguard.refusal import REFUSAL_PREFIX

MODES = ("on", "off", "monitor")
DEFAULT_MAX_INTERVENTIONS = 2


def logit(p: float) -> float:
    """Probability to log-odds; 0 and 1 become -inf and inf."""
    if not 0.0 <= p <= 1.0:
        raise InputError(f"a threshold probability must lie in [0, 1], not {p}")
    if p in (0.0, 1.0):
        return -math.inf if p == 0.0 else math.inf
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class GuardSettings:
    """What the user chose; None means "what the model's head says" (then the default).
    Threshold overrides are probabilities, like the recipe's [guard] threshold."""

    mode: str = "on"
    query_threshold: float | None = None
    response_threshold: float | None = None
    tau: int | None = None
    refusal_prefix: str | None = None
    max_interventions: int = DEFAULT_MAX_INTERVENTIONS
    window: int | None = None  # None: tau (consecutive verdicts)
    # a CLS head's re-checks (localguard/cls_token.py: due), for whoever opens the backend
    cls_schedule: str = default("guard", "cls_schedule")
    cls_period: int = default("guard", "cls_period")

    @classmethod
    def from_recipe(cls, guard: dict) -> tuple[GuardSettings, Sampling]:
        """Settings and sampling from a recipe's [guard] section, or from command-line options
        named like its keys (plus seed); one threshold for both outputs."""
        threshold = guard.get("threshold")
        settings = cls(
            mode=guard.get("mode", "on"),
            query_threshold=threshold,
            response_threshold=threshold,
            tau=guard.get("tau"),
            refusal_prefix=guard.get("refusal_prefix"),
            window=guard.get("window") or None,  # the recipe's 0 means tau
            **{k: guard[k] for k in ("cls_schedule", "cls_period") if guard.get(k) is not None},
        )
        keys = ("temperature", "top_p", "top_k", "max_tokens", "seed")
        return settings, Sampling(**{k: guard[k] for k in keys if guard.get(k) is not None})

    def resolve(self, head: HeadInfo) -> Resolved:
        if self.mode not in MODES:
            raise InputError(f"guard mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not head.names:
            if self.mode != "off":
                raise InputError("this model has no safety head, so the guard can only be off")
            return Resolved("off", -1, -1, math.inf, math.inf, 1, 1, "", 0, {})
        q, r = head.index("query"), head.index("response")

        def pick(override, k: int) -> tuple[float, str]:
            if override is not None:
                return logit(float(override)), "settings"
            return float(head.thresholds[k]), "head"

        (qt, qs), (rt, rs) = pick(self.query_threshold, q), pick(self.response_threshold, r)
        tau, tau_from = _first(
            (self.tau, "settings"), (head.tau, "head"), (default("guard", "tau"), "default")
        )
        prefix, prefix_from = _first(
            (self.refusal_prefix, "settings"),
            (head.refusal_prefix, "head"),
            (REFUSAL_PREFIX, "default"),
        )
        if int(tau) < 1:
            raise InputError(f"tau must be at least 1, not {tau}")
        window = int(tau) if self.window is None else int(self.window)
        if window < int(tau):
            raise InputError(f"window ({window}) must be at least tau ({tau})")
        if not str(prefix).strip():
            raise InputError("the refusal prefix must not be empty")
        if self.max_interventions < 0:
            raise InputError("max_interventions must not be negative")
        sources = {
            "query_threshold": qs,
            "response_threshold": rs,
            "tau": tau_from,
            "refusal_prefix": prefix_from,
        }
        return Resolved(
            self.mode, q, r, qt, rt, int(tau), window, str(prefix), self.max_interventions, sources
        )


def _bias_arrays(bias: dict, vocab_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A logit bias as (token ids, float32 values), checked against the vocabulary once."""
    if not bias:
        return None
    for token in bias:
        if not 0 <= int(token) < vocab_size:
            raise InputError(f"logit_bias token id {token} is outside the vocabulary")
    ids = np.array([int(t) for t in bias], np.intp)
    return ids, np.array([float(v) for v in bias.values()], np.float32)


def _first(*candidates):
    return next((value, source) for value, source in candidates if value is not None)


@dataclass(frozen=True)
class Resolved:
    """Settings with every value decided; thresholds in logit units."""

    mode: str
    query: int
    response: int
    query_threshold: float
    response_threshold: float
    tau: int
    window: int
    refusal_prefix: str
    max_interventions: int
    sources: dict


@dataclass
class Intervention:
    """One decision of the guard. step: reply tokens decoded so far, rewound ones included
    (0: before the first); at: the turning point, the reply token index from which tokens
    were dropped (or would have been, in monitor mode); scores: the logits that decided (the
    query logit, or the response logits from the turning point on); action: "refuse" (prefix
    forced), "stop" (the reply ends at the turning point) or "flag" (monitor mode)."""

    step: int
    at: int
    output: str
    scores: list[float]
    threshold: float
    action: str
    dropped: int = 0  # reply tokens removed from the KV cache


@dataclass
class GuardResult:
    text: str  # the reply as the user sees it (a kept prefill included)
    tokens: list[int]  # its token ids
    response_logits: list[float]  # the response logit at each of them
    finish: str  # "eos", "length", "stopped" (by the guard) or "halted" (by the caller)
    query_logit: float
    interventions: list[Intervention]
    settings: dict  # the resolved settings, with where each came from
    prompt_tokens: int
    steps: int  # reply tokens fed, rewound ones included

    @property
    def intervened(self) -> bool:
        return any(i.action in ("refuse", "stop") for i in self.interventions)

    def record(self) -> dict:
        return asdict(self)


def prompt_messages(prompt: str, start: str = "") -> list[dict]:
    """A one-turn chat; a non-empty start is forced as the beginning of the reply, which the
    model continues (split_prefill takes it apart again)."""
    messages = [{"role": "user", "content": prompt}]
    return messages + ([{"role": "assistant", "content": start}] if start else [])


def split_prefill(messages: Sequence[dict]) -> tuple[list[dict], str]:
    """A chat ending in an assistant message is a request to continue that message: the chat
    before it and the forced start."""
    messages = [dict(m) for m in messages]
    prefill = ""
    if messages and messages[-1].get("role") == "assistant":
        prefill = str(messages.pop()["content"])
    if not messages:
        raise InputError("a guarded chat needs at least one message before the reply")
    return messages, prefill


def generate(
    backend: GuardBackend,
    messages: Sequence[dict],
    settings: GuardSettings | None = None,
    sampling: Sampling | None = None,
    on_text: Callable[[str], None] | None = None,
    *,
    on_step: Callable[[float, bool], None] | None = None,
    halt: Callable[[], bool] | None = None,
) -> GuardResult:
    """The guarded reply to a chat; on_text receives the text as it is released.

    on_step(score, flagged) is called for every reply token fed to the model, as soon as its
    verdict is in: its response logit (nan without a head) and whether it counts as unsafe
    (never for the guard's own forced prefix, nor in mode off). Tokens that a rewind removes
    later are reported too: it is what the guard sees, for a live meter. halt() is asked
    before each sampled token; True ends the reply there (finish "halted": a stop sequence
    was released, or the caller went away)."""
    prompt, forced = chat_tokens(backend, messages)
    return generate_tokens(
        backend, prompt, forced, settings, sampling, on_text, on_step=on_step, halt=halt
    )


def chat_tokens(backend: GuardBackend, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, forced reply start ids) of a chat: the chat through the model's template,
    a final assistant message as the start the reply must continue (split_prefill)."""
    chat, prefill = split_prefill(messages)
    prompt = backend.encode_chat(chat, add_generation_prompt=True)
    return prompt, backend.encode_text(prefill) if prefill else []


def generate_tokens(
    backend: GuardBackend,
    prompt: list[int],
    forced: list[int] | None = None,
    settings: GuardSettings | None = None,
    sampling: Sampling | None = None,
    on_text: Callable[[str], None] | None = None,
    *,
    on_step: Callable[[float, bool], None] | None = None,
    halt: Callable[[], bool] | None = None,
) -> GuardResult:
    """The guarded continuation of prompt token ids (a chat already rendered, or raw text for
    a plain completion), forced tokens first; as generate."""
    if not prompt:
        raise InputError("the prompt is empty: the guard needs at least one token to judge")
    cfg = (settings or GuardSettings()).resolve(backend.head)
    run = _Run(backend, cfg, sampling or Sampling(), len(prompt), on_text, on_step, halt)
    return run.go(prompt, list(forced or []))


class _Run:
    """The state of one guarded reply."""

    def __init__(
        self,
        backend,
        cfg: Resolved,
        sampling: Sampling,
        prompt_len: int,
        on_text,
        on_step=None,
        halt=None,
    ):
        self.b, self.cfg, self.sampling = backend, cfg, sampling
        self.prompt_len, self.on_text, self.on_step = prompt_len, on_text, on_step
        self.halt = halt
        self.mask = np.array(backend.safety_ids, np.intp)  # the safety rows, as an index
        self.bias = _bias_arrays(sampling.logit_bias, backend.vocab_size)
        self.reply: list[int] = []  # tokens after the prompt, exactly as in the KV cache
        self.scores: list[float] = []  # response logit per reply token
        self.floor = 0  # reply tokens before this index are final (the forced prefix)
        self.unsafe: list[int] = []  # unsafe reply tokens within the window, since the floor
        self.flagging = False  # monitor mode: the trigger condition held at the last token
        self.shown = 0  # reply tokens released to the user
        self.text_from = 0  # released text is decoded from this reply token on (incremental)
        self.text_upto = 0  # ...and the reply tokens up to here are released as text
        self.held = False  # the last release ended inside a character and was held back
        self.steps = 0
        self.refusals = 0
        self.interventions: list[Intervention] = []

    # --- the loop ---

    def go(self, prompt: list[int], prefill: list[int]) -> GuardResult:
        cfg, b = self.cfg, self.b
        b.reset()
        sample = b.sampler(self.sampling)  # before the first feed: a backend may draw ahead
        step = b.feed(prompt, every=False)  # only the last prompt token's verdict is read
        query = float(step.safety[-1, cfg.query]) if step.safety.shape[1] else math.nan
        forced, is_prefix = prefill, False
        if cfg.mode != "off" and query >= cfg.query_threshold:
            action = "refuse" if cfg.mode == "on" else "flag"
            self.interventions.append(
                Intervention(0, 0, "query", [query], cfg.query_threshold, action)
            )
            if action == "refuse":
                self.refusals += 1
                forced, is_prefix = self._prefix(), True
        logits, finish = step.logits, None
        while finish is None:
            if forced:
                tokens, forcing, forced = forced, is_prefix, []
            elif self.halt is not None and self.halt():
                finish = "halted"
                break
            elif self._may_continue():
                tokens, forcing = [self._pick(sample, logits)], False
            else:
                finish = "length"
                break
            step = b.feed(tokens)
            logits = step.logits
            action = self._judge(tokens, step.safety, forcing)
            if action == "refuse":
                forced, is_prefix = self._prefix(), True
            elif action == "stop":
                finish = "stopped"
            elif tokens[-1] in b.eos_ids:
                finish = "eos"
            self._release()
        return self._result(query, finish)

    def _may_continue(self) -> bool:
        """Below the token limit; past it only to settle an unsafe run that began inside it."""
        if len(self.reply) < self.sampling.max_tokens:
            return True
        open_at = self._open()  # leaves the window or triggers within `window` tokens
        return self.cfg.mode == "on" and open_at is not None and open_at < self.sampling.max_tokens

    def _open(self) -> int | None:
        """The first reply token that a later verdict could still make a turning point."""
        n = len(self.reply)
        return next((i for i in self.unsafe if i > n - self.cfg.window), None)

    def _pick(self, sample, logits: np.ndarray) -> int:
        x = np.asarray(logits, dtype=np.float32)
        penalty = self._penalty()
        if self.bias is not None or penalty is not None:
            x = x.copy()  # bias and penalties change the draw only, never the step's logits
            if self.bias is not None:
                np.add.at(x, self.bias[0], self.bias[1])
            if penalty is not None:
                x[penalty[0]] -= penalty[1]
            x[self.mask] = -np.inf  # after the bias: it cannot unmask them
        elif self.mask.size and not np.isneginf(x[self.mask]).all():
            x = x.copy()  # backends hand them over masked already; mask a copy if one did not
            x[self.mask] = -np.inf
        token = int(sample(x))
        if token in self.b.safety_ids:
            raise RuntimeError(f"the sampler picked the safety row {token} at -inf")
        return token

    def _penalty(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(token ids, amounts) that the presence and frequency penalties take off the logits
        of the tokens already in the reply; None when there are none."""
        presence, frequency = self.sampling.presence_penalty, self.sampling.frequency_penalty
        if not self.reply or not (presence or frequency):
            return None
        ids, counts = np.unique(np.array(self.reply, np.intp), return_counts=True)
        return ids, (presence + frequency * counts).astype(np.float32)

    def _prefix(self) -> list[int]:
        """The refusal prefix as tokens, after a space when it follows text."""
        before = self.b.decode(self.reply)
        sep = " " if before and not before[-1].isspace() else ""
        return self.b.encode_text(sep + self.cfg.refusal_prefix)

    # --- verdicts ---

    def _judge(self, tokens: list[int], safety: np.ndarray, forcing: bool) -> str | None:
        """Append fed tokens and their verdicts; "refuse" or "stop" after a rewind."""
        cfg = self.cfg
        for i, token in enumerate(tokens):
            self.reply.append(int(token))
            score = float(safety[i, cfg.response]) if safety.shape[1] else math.nan
            self.scores.append(score)
            self.steps += 1
            n = len(self.reply)
            if cfg.mode == "off" or forcing:
                if forcing and cfg.mode != "off":  # the guard's own prefix: final, no run spans it
                    self.floor, self.unsafe = n, []
                if self.on_step is not None:
                    self.on_step(score, False)
                continue
            flagged = score >= cfg.response_threshold
            if self.on_step is not None:
                self.on_step(score, flagged)
            if self.unsafe:  # only the verdicts within the window count
                self.unsafe = [j for j in self.unsafe if j >= n - cfg.window]
            if flagged:
                self.unsafe.append(n - 1)
            if not flagged or len(self.unsafe) < cfg.tau:
                self.flagging = False
                continue
            at = self.unsafe[0]
            run = self.scores[at:n]
            if cfg.mode == "monitor":  # recorded once while the condition keeps holding
                if not self.flagging:
                    self.interventions.append(
                        Intervention(
                            self.steps, at, "response", run, cfg.response_threshold, "flag"
                        )
                    )
                self.flagging = True
                continue
            action = "refuse" if self.refusals < cfg.max_interventions else "stop"
            self.refusals += 1
            dropped = self.b.length - (self.prompt_len + at)
            assert self.shown <= at, "a released token would be rewound"
            self.b.rewind(self.prompt_len + at)
            del self.reply[at:], self.scores[at:]
            self.unsafe = []
            self.interventions.append(
                Intervention(
                    self.steps, at, "response", run, cfg.response_threshold, action, dropped
                )
            )
            return action
        return None

    # --- what the user sees ---

    def _content(self, upto: int) -> list[int]:
        tokens = self.reply[:upto]
        return tokens[:-1] if tokens and tokens[-1] in self.b.eos_ids else tokens

    def _release(self, final: bool = False) -> None:
        n = len(self.reply)
        if final or self.cfg.mode != "on":
            upto = n
        else:
            upto = max(self.floor, n - self.cfg.tau)
            open_at = self._open()
            if open_at is not None:
                upto = min(upto, open_at)
        upto = min(upto, self.sampling.max_tokens)  # tokens decoded past it are never shown
        if upto < self.shown or (upto == self.shown and not (final and self.held)):
            return
        self.shown = upto
        if self.on_text is None:
            return
        # Incremental: decode from the token where the previous release began, not the whole
        # reply, and pass on what the new tokens add (both texts start at the same token, as a
        # tokenizer may treat the leading space of a first token differently).
        end = upto - 1 if upto and self.reply[upto - 1] in self.b.eos_ids else upto
        start, done = self.text_from, self.text_upto
        before = self.b.decode(self.reply[start:done]) if done > start else ""
        text = self.b.decode(self.reply[start:end])
        self.held = not final and text.endswith("\ufffd")  # half a character: wait for the rest
        if not self.held and text.startswith(before) and len(text) > len(before):
            self.on_text(text[len(before) :])
            self.text_from, self.text_upto = done, end

    def _result(self, query: float, finish: str) -> GuardResult:
        self._release(final=True)
        tokens = self._content(len(self.reply))
        if len(tokens) > self.sampling.max_tokens:
            tokens, finish = tokens[: self.sampling.max_tokens], "length"
        cfg = self.cfg
        settings = {
            "mode": cfg.mode,
            "query_threshold": cfg.query_threshold,
            "response_threshold": cfg.response_threshold,
            "tau": cfg.tau,
            "window": cfg.window,
            "refusal_prefix": cfg.refusal_prefix,
            "max_interventions": cfg.max_interventions,
            "sources": dict(cfg.sources),
        }
        return GuardResult(
            text=self.b.decode(tokens),
            tokens=tokens,
            response_logits=self.scores[: len(tokens)],
            finish=finish,
            query_logit=query,
            interventions=self.interventions,
            settings=settings,
            prompt_tokens=self.prompt_len,
            steps=self.steps,
        )
