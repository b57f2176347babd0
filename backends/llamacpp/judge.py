"""A GGUF model through llama.cpp as the Safety Critic's judge (Llama Guard style or our rubric)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from localguard.errors import InputError


class LlamaCppJudge:
    """Answers each prompt as one user message through the model's own chat template.

    Temperature 0 so a score is reproducible and safe to cache. One call per prompt:
    llama-cpp-python's chat completion has no batched form.
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

    def answer(self, text: str) -> str:
        """The judge's raw answer to one rubric-filled prompt."""
        out = self.llm.create_chat_completion(
            messages=[{"role": "user", "content": text}],
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        return out["choices"][0]["message"].get("content") or ""

    def complete(self, prompts: Sequence[str]) -> list[str]:
        return [self.answer(p) for p in prompts]
