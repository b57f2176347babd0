"""A GGUF model through llama.cpp as the Safety Critic's judge (Llama Guard style or our rubric)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from localguard.encoding import render_pieces
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
        import llama_cpp

        self.name = str(path.resolve())
        self.max_tokens = max_tokens
        try:
            self.llm = llama_cpp.Llama(model_path=str(path), verbose=False, n_ctx=n_ctx)
        except ValueError as exc:  # llama-cpp-python's way of saying the file did not load
            raise InputError(f"judge model {path} cannot be loaded by llama.cpp ({exc})") from None
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise InputError(f"judge model {path} has no chat template in its metadata")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = self.template.from_string(template)

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    def tokens(self, text: str) -> list[int]:
        """The prompt for one user message, ready for generation."""
        specials = {
            "bos_token": self._piece(self.llm.token_bos()),
            "eos_token": self._piece(self.llm.token_eos()),
        }

        def render(marked: list[dict]) -> str:
            return self.template.render(messages=marked, add_generation_prompt=True, **specials)

        ids: list[int] = []
        for piece, is_message in render_pieces(render, [{"role": "user", "content": text}]):
            ids += self.llm.tokenize(piece.encode(), add_bos=False, special=not is_message)
        bos = self.llm.token_bos()
        if self.llm._model.add_bos_token() and bos >= 0 and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def answer(self, text: str) -> str:
        """The judge's raw answer to one rubric-filled prompt."""
        self.llm.reset()
        prompt = self.tokens(text)
        out = self.llm.create_completion(prompt, temperature=0.0, max_tokens=self.max_tokens)
        return out["choices"][0]["text"] or ""

    def complete(self, prompts: Sequence[str]) -> list[str]:
        return [self.answer(p) for p in prompts]
