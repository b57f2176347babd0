"""The llama.cpp guard backend: a GGUF file with the safety head baked into its output rows.

It owns its decode loop on GGUFModel (llama.cpp's low-level API): tokens are fed in batches;
of the logits only the head's columns at every fed position and the last position's row are
copied out (GGUFModel.feed_columns); the head's rows (stored at 1/scale, bias in the
metadata) give the calibrated safety logits, and a rewind removes KV positions. Sampling
is the Guard's (numpy, after its logit bias and the re-masking of the safety rows); nothing
here passes a logit_bias or a logits processor to llama-cpp-python, whose high-level
completion cannot rewind and silently drops a logit_bias given together with a processor.

A CLS head (a file exported from head train --mode cls) has no rows at the tokens: after each
feed, every due verdict (cls_token.due, on the chosen re-classification schedule) is one CLS
step, GGUFModel.cls: a second KV-cache sequence that shares the cells of the query (the user
messages' text that encode_chat recorded, else the whole prompt) and of the rule's window,
decodes the CLS token one position past the newest of them, gives the head's columns of its
logits, and is removed. The CLS step is a decode of its own. llama.cpp puts a token into two
sequences only while both span the same positions, and the CLS sequence never holds the first
one, so a verdict that reads the newest token cannot share that token's decode; one that reads
up to the token before could, a token late, but on a CPU a decode of two rows costs nearly two
decodes (scripts/bench_cls_batch.py: batching saves about 8 % of a re-check on SmolLM2-135M).
The schedule is what makes CLS cheap: between re-checks a step costs what plain decoding does.

The chat template is the file's `tokenizer.chat_template`, rendered in jinja2's sandbox around
sentinels (localguard.encoding.render_pieces): the template's text is tokenized with control
tokens on, the messages' text with them off, so nobody can type a control token.

A prompt (a fresh sequence's first feed, read for its last verdict) is decoded in chunks that
start at multiples of PROMPT_CHUNK. reset() keeps the KV cells: the next prompt keeps the whole
chunks it shares with the one before (the template's system turn, a jailbreak wrapper) instead
of decoding them again. llama.cpp's logits depend a little on how a sequence was split into
decodes, so the split is fixed by position alone: a prompt gets the same logits whether its
chunks were kept or decoded, and a reply does not depend on what was asked before it.

    backend = LlamaCppGuardBackend.load("model-Q4_K_M.gguf")
    result = localguard.guard.generate(backend, [{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from localguard.backends.base import GuardBackend, HeadInfo, Sampling, Step, reply_steps
from localguard.backends.llamacpp.gguf_runtime import GGUFModel, HeadSpec, read_metadata
from localguard.cls_token import ClsRule, ClsState
from localguard.encoding import render_pieces
from localguard.errors import InputError
from localguard.recipe import default

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
PROMPT_CHUNK = 32  # tokens per decode of a prompt; its whole chunks are what a next one keeps


def compile_chat_template(source: str):
    """A jinja2 template in the immutable sandbox, as Hugging Face renders chat templates."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise InputError(f"the chat template refused the chat: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def template_encoding(
    template,
    messages: Sequence[dict],
    tokenize: Callable[[str, bool], list[int]],
    specials: dict[str, str],
    bos: int | None = None,
    add_generation_prompt: bool = True,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a chat through a compiled template, and the [first, end) ranges of the
    user messages' own text: the template's text tokenized with special-token parsing on
    (tokenize(text, True)), each message's text with it off; `bos` is put first unless the
    template already did."""

    def render(marked: list[dict]) -> str:
        return template.render(
            messages=marked, add_generation_prompt=add_generation_prompt, **specials
        )

    ids: list[int] = []
    spans, roles = [], iter(m.get("role") for m in messages)
    for piece, is_message in render_pieces(render, messages):
        first = len(ids)
        ids += tokenize(piece, not is_message)
        if is_message and next(roles) == "user":
            spans.append((first, len(ids)))
    if bos is not None and bos >= 0 and ids[:1] != [bos]:
        ids.insert(0, bos)
        spans = [(a + 1, b + 1) for a, b in spans]
    return ids, spans


class _ClsSteps(ClsState):
    """A CLS head's verdicts on llama.cpp (see the module docstring)."""

    def __init__(self, spec: HeadSpec, schedule: str, period: int) -> None:
        super().__init__(spec, ClsRule(*spec.cls_rule), schedule, period)
        self.columns = np.array(spec.token_ids, np.intp)

    def verdicts(
        self, model: GGUFModel, count: int, calibrate: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """(count, K) verdicts after each of the last `count` fed tokens, calibrated from the
        head's columns; nan for a prompt token before the last (none is taken inside it)."""
        live = self.live
        first = model.position - count + 1 - live.start  # reply tokens read by the first row
        rows = [np.full(len(self.columns), np.nan)] * max(0, -first)
        first = max(first, 0)
        windows = live.windows(first, model.position - live.start - first + 1)
        for t, (lo, hi) in enumerate(windows, start=first):
            logits = None
            if live.wants(t):
                reads = [*live.spans, (live.start + int(lo), live.start + int(hi))]
                logits = calibrate(model.cls(reads, self.columns))
            rows.append(live.take(t, logits))
        return np.stack(rows)


class LlamaCppGuardBackend(GuardBackend):
    """One GGUF model (optionally + LoRA GGUF) with its baked head and one sequence."""

    batches_replies = True  # GGUFModel.decode_many

    def __init__(
        self,
        model: GGUFModel,
        cls_schedule: str = default("guard", "cls_schedule"),
        cls_period: int = default("guard", "cls_period"),
    ) -> None:
        """A GGUF without a localguard head serves with the guard off only; a CLS head's
        verdicts are re-checked on cls_schedule (localguard/cls_token.py: due)."""
        spec = model.head
        if spec is not None and spec.thresholds is None:
            raise InputError(f"{model.path}: the safety head has no thresholds")
        self.model, self.spec = model, spec
        self.head = (
            HeadInfo.absent()
            if spec is None
            else HeadInfo(
                tuple(spec.names),
                np.asarray(spec.thresholds, np.float64),
                spec.tau,
                spec.refusal_prefix,
            )
        )
        self._cls = None
        if spec is not None and spec.cls_token is not None:
            self._cls = _ClsSteps(spec, cls_schedule, cls_period)
        # never sampled nor fed: the head's rows, and a CLS head's token
        self.safety_ids = tuple(int(i) for i in model.unsampled)
        self._safety_set = frozenset(self.safety_ids)
        self._safety_index = np.array(() if spec is None else spec.token_ids, np.intp)
        self._masked = np.array(self.safety_ids, np.intp)
        self._scale = None if spec is None or spec.scale is None else spec.scale.astype(np.float64)
        self._bias = None if spec is None else np.asarray(spec.bias, np.float64)  # (K,)
        self.vocab_size = model.n_vocab
        self.eos_ids = frozenset(
            t for t in range(model.n_vocab) if t not in self.safety_ids and model.is_eog(t)
        )
        meta = read_metadata(model.path, keys=(CHAT_TEMPLATE_KEY,))
        source = meta.get(CHAT_TEMPLATE_KEY)
        if not source:
            raise InputError(f"{model.path} has no chat template in its metadata")
        self._template = compile_chat_template(str(source))
        bos, eos = model.bos, model.eos
        self._specials = {
            "bos_token": self._text(bos, special=True) if bos >= 0 else "",
            "eos_token": self._text(eos, special=True) if eos >= 0 else "",
        }
        self._bos = bos if model.adds_bos else None
        self._pieces: dict[int, bytes] = {}
        self._tokens: list[int] = []
        self._chunked = 0  # the sequence's first tokens, decoded as whole prompt chunks
        self._stale: list[int] = []  # after reset(): the chunks still in the KV cache

    @classmethod
    def load(
        cls,
        path: Path,
        lora: Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        **cls_options,
    ) -> LlamaCppGuardBackend:
        """cls_options: cls_schedule and cls_period, for a CLS head."""
        model = GGUFModel(Path(path), lora=lora, n_ctx=n_ctx, n_threads=n_threads)
        try:
            return cls(model, **cls_options)
        except BaseException:
            model.close()
            raise

    def close(self) -> None:
        self.model.close()

    # --- text ---

    def _text(self, token: int, special: bool = False) -> str:
        return self.model.piece(token, special=special).decode("utf-8", "replace")

    def encode_text(self, text: str) -> list[int]:
        return self.model.tokenize(text, special=False, add_bos=False)

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True):
        def tokenize(text: str, special: bool) -> list[int]:
            return self.model.tokenize(text, special=special, add_bos=False)

        ids, spans = template_encoding(
            self._template, messages, tokenize, self._specials, self._bos, add_generation_prompt
        )
        if self._cls is not None and add_generation_prompt:  # the query a prompt feed reads
            self._cls.prompt = (tuple(ids), spans)
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        out = []
        for t in tokens:
            t = int(t)
            if t not in self._pieces:  # control tokens (and the safety rows) are empty
                self._pieces[t] = self.model.piece(t, special=False)
            out.append(self._pieces[t])
        return b"".join(out).decode("utf-8", "replace")

    # --- the sequence ---

    def reset(self) -> None:
        if self._cls is not None:  # a CLS head's verdicts start from an empty cache
            self.model.reset()
        elif self._tokens:  # kept until the next prompt, which may share chunks with them
            self._stale = self._tokens[: min(self._chunked, self.model.position)]
        self._tokens, self._chunked = [], 0

    def feed(self, tokens: Sequence[int], every: bool = True) -> Step:
        ids = [int(t) for t in tokens]
        if not ids:
            raise InputError("feed needs at least one token")
        for t in ids:
            if t in self._safety_set or not 0 <= t < self.vocab_size:
                raise InputError(f"token id {t} is not a vocabulary token (safety row or beyond)")
        if not self._tokens and not every and self._cls is None:
            return self._feed_prompt(ids)
        if self.model.position != len(self._tokens):  # a reset's cells, an interrupted feed
            self.model.rewind(min(self.model.position, len(self._tokens)))
            self._tokens = self._tokens[: self.model.position]
        # one copy of the last row (then masked in place) and the head's columns of each row
        cls = self._cls is not None
        last, rows = self.model.feed_columns(ids, self._safety_index, all_logits=every and not cls)
        if cls and not self._tokens:
            self._cls.begin(ids)
        self._tokens += ids
        last[self._masked] = -np.inf
        if cls:
            count = len(ids) if every else 1
            return Step(last, self._cls.verdicts(self.model, count, self._calibrated))
        return Step(last, self._calibrated(rows))

    def _feed_prompt(self, ids: list[int]) -> Step:
        """A fresh sequence's prompt, in PROMPT_CHUNK chunks from position 0; the whole chunks
        it shares with the sequence before reset() stay in the cache (never its last token,
        whose logits are the step's)."""
        stale, self._stale = self._stale, []
        shared, limit = 0, min(len(stale), len(ids) - 1, self.model.position)
        while shared < limit and stale[shared] == ids[shared]:
            shared += 1
        keep = shared - shared % PROMPT_CHUNK
        self.model.rewind(keep)
        for start in range(keep, len(ids), PROMPT_CHUNK):
            chunk = ids[start : start + PROMPT_CHUNK]
            last, rows = self.model.feed_columns(chunk, self._safety_index, all_logits=False)
        self._tokens = ids
        self._chunked = len(ids) - len(ids) % PROMPT_CHUNK
        last[self._masked] = -np.inf
        return Step(last, self._calibrated(rows))

    def _calibrated(self, rows: np.ndarray) -> np.ndarray:
        """Calibrated safety logits from the head's columns of the logits: raw / scale + bias
        in float64, as HeadSpec.logits computes them."""
        if self.spec is None:
            return rows.astype(np.float64)
        raw = rows if self._scale is None else rows / self._scale
        return raw + self._bias

    def replies(
        self,
        prompts: Sequence[Sequence[int]],
        samplings: Sequence[Sampling],
        ended: Callable[[int, list[int]], bool] | None = None,
    ) -> list[list[int]]:
        """GuardBackend.replies, every prompt decoded side by side (GGUFModel.decode_many)."""
        if any(t in self._safety_set for p in prompts for t in p):
            raise InputError("a prompt holds a safety row's token id")
        out, step = reply_steps(len(prompts), samplings, self.eos_ids, ended)
        if prompts:
            room = max(s.max_tokens for s in samplings)
            self.model.decode_many(prompts, room, lambda i, logits: step(i, self.masked(logits)))
        return out

    def rewind(self, length: int) -> None:
        if not 0 <= length <= len(self._tokens):
            raise ValueError(f"cannot rewind to {length}: the sequence has {self.length} tokens")
        self.model.rewind(length)
        del self._tokens[length:]
        self._chunked = min(self._chunked, length - length % PROMPT_CHUNK)
        if self._cls is not None and self._cls.live is not None:
            self._cls.live.rewind(length - self._cls.live.start)
