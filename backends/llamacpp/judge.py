"""A GGUF model through llama.cpp as the Safety Critic's judge (Llama Guard style or our rubric)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from localguard.backends.llamacpp.extra_buffers import open_llama
from localguard.backends.llamacpp.guarded import compile_chat_template, template_encoding
from localguard.errors import InputError


class LlamaCppJudge:
    """Answers each prompt as one user message through the model's own chat template.

    The prompt carries training data, which anybody may have written, so it is tokenized with
    special-token parsing off: the template (from the GGUF's metadata, rendered in a sandbox)
    is tokenized with control tokens on and the message text with them off, as
    localguard.encoding does for Hugging Face tokenizers. llama-cpp-python's own chat
    completion would parse a typed "<|im_end|>" as the real control token.

    Temperature 0 so a score is reproducible and safe to cache. One call per prompt.
    """

    def __init__(self, gguf_path: str | os.PathLike[str], n_ctx: int = 2048, max_tokens: int = 4):
        path = Path(gguf_path).expanduser()
        if not path.is_file():
            raise InputError(f"judge model {path} does not exist (expected a .gguf file)")

        self.name = str(path.resolve())
        self.max_tokens = max_tokens
        try:
            self.llm = open_llama(path, verbose=False, n_ctx=n_ctx)
        except ValueError as exc:  # llama-cpp-python's way of saying the file did not load
            raise InputError(f"judge model {path} cannot be loaded by llama.cpp ({exc})") from None
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise InputError(f"judge model {path} has no chat template in its metadata")
        self.template = compile_chat_template(template)

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    def tokens(self, text: str) -> list[int]:
        """The prompt for one user message, ready for generation."""
        specials = {
            "bos_token": self._piece(self.llm.token_bos()),
            "eos_token": self._piece(self.llm.token_eos()),
        }

        def tokenize(piece: str, special: bool) -> list[int]:
            return self.llm.tokenize(piece.encode(), add_bos=False, special=special)

        import llama_cpp

        adds_bos = llama_cpp.llama_vocab_get_add_bos(
            llama_cpp.llama_model_get_vocab(self.llm.model)
        )
        bos = self.llm.token_bos() if adds_bos else None
        message = [{"role": "user", "content": text}]
        return template_encoding(self.template, message, tokenize, specials, bos)[0]

    def answer(self, text: str) -> str:
        """The judge's raw answer to one rubric-filled prompt."""
        self.llm.reset()
        prompt = self.tokens(text)
        out = self.llm.create_completion(prompt, temperature=0.0, max_tokens=self.max_tokens)
        return out["choices"][0]["text"] or ""

    def complete(self, prompts: Sequence[str]) -> list[str]:
        return [self.answer(p) for p in prompts]
