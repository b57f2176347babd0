"""The llama.cpp guard backend: a GGUF file with the safety head baked into its output rows.

It owns its decode loop on GGUFModel (llama.cpp's low-level API): tokens are fed in batches;
of the logits only the head's columns at every fed position and the last position's row are
copied out (GGUFModel.feed_columns); the head's rows (stored at 1/scale, bias in the
metadata) give the calibrated safety logits, and a rewind removes KV positions. Sampling
is the Guard's (numpy, after its logit bias and the re-masking of the safety rows); nothing
here passes a logit_bias or a logits processor to llama-cpp-python, whose high-level
completion cannot rewind and silently drops a logit_bias given together with a processor.

The chat template is the file's `tokenizer.chat_template`, rendered in jinja2's sandbox around
sentinels (localguard.encoding.render_pieces): the template's text is tokenized with control
tokens on, the messages' text with them off, so nobody can type a control token.

    backend = LlamaCppGuardBackend.load("model-Q4_K_M.gguf")
    result = localguard.guard.generate(backend, [{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from localguard.backends.base import GuardBackend, HeadInfo, Step
from localguard.backends.llamacpp.gguf_runtime import GGUFModel, read_metadata
from localguard.encoding import render_pieces
from localguard.errors import InputError

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def compile_chat_template(source: str):
    """A jinja2 template in the immutable sandbox, as Hugging Face renders chat templates."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise InputError(f"the chat template refused the chat: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def template_tokens(
    template,
    messages: Sequence[dict],
    tokenize: Callable[[str, bool], list[int]],
    specials: dict[str, str],
    bos: int | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a chat through a compiled template: the template's own text tokenized with
    special-token parsing on (tokenize(text, True)), each message's text with it off; `bos` is
    put first unless the template already did."""

    def render(marked: list[dict]) -> str:
        return template.render(
            messages=marked, add_generation_prompt=add_generation_prompt, **specials
        )

    ids: list[int] = []
    for piece, is_message in render_pieces(render, messages):
        ids += tokenize(piece, not is_message)
    if bos is not None and bos >= 0 and ids[:1] != [bos]:
        ids.insert(0, bos)
    return ids


class LlamaCppGuardBackend(GuardBackend):
    """One GGUF model (optionally + LoRA GGUF) with its baked head and one sequence."""

    def __init__(self, model: GGUFModel) -> None:
        """A GGUF without a localguard head serves with the guard off only."""
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
        self.safety_ids = () if spec is None else tuple(int(i) for i in spec.token_ids)
        self._safety_set = frozenset(self.safety_ids)
        self._safety_index = np.array(self.safety_ids, np.intp)
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

    @classmethod
    def load(
        cls,
        path: Path,
        lora: Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
    ) -> LlamaCppGuardBackend:
        return cls(GGUFModel(Path(path), lora=lora, n_ctx=n_ctx, n_threads=n_threads))

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

        return template_tokens(
            self._template, messages, tokenize, self._specials, self._bos, add_generation_prompt
        )

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
        self.model.reset()
        self._tokens = []

    def feed(self, tokens: Sequence[int], every: bool = True) -> Step:
        ids = [int(t) for t in tokens]
        if not ids:
            raise InputError("feed needs at least one token")
        for t in ids:
            if t in self._safety_set or not 0 <= t < self.vocab_size:
                raise InputError(f"token id {t} is not a vocabulary token (safety row or beyond)")
        if self.model.position != len(self._tokens):  # e.g. an interrupted feed
            self.model.rewind(min(self.model.position, len(self._tokens)))
            self._tokens = self._tokens[: self.model.position]
        # one copy of the last row (then masked in place) and the head's columns of each row
        last, rows = self.model.feed_columns(ids, self._safety_index, all_logits=every)
        self._tokens += ids
        last[self._safety_index] = -np.inf
        if self.spec is None:
            return Step(last, rows.astype(np.float64))
        # calibrated = raw / scale + bias in float64, as HeadSpec.logits computes it
        raw = rows if self._scale is None else rows / self._scale
        return Step(last, raw + self._bias)

    def rewind(self, length: int) -> None:
        if not 0 <= length <= len(self._tokens):
            raise ValueError(f"cannot rewind to {length}: the sequence has {self.length} tokens")
        self.model.rewind(length)
        del self._tokens[length:]
