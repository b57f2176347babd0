"""An MLX model as the Safety Critic's judge: greedy, batched answers to rubric-filled prompts."""

from __future__ import annotations

import os
from collections.abc import Sequence

from localguard.backends.mlx.scratch import greedy_answers
from localguard.fingerprint import model_fingerprint
from localguard.hub import resolve_model


class MLXJudge:
    """Loads a chat model (localguard's MLX loading) and answers each prompt as one user message.

    Decoding is greedy so a score is reproducible and safe to cache; a few tokens suffice
    for an answer like "4" or "unsafe\\nS1".
    """

    def __init__(self, model_path: str | os.PathLike[str], max_tokens: int = 4):
        from localguard.backends.mlx.loading import load_model

        folder = resolve_model(model_path)
        # the fingerprint keeps cached scores of a rebuilt model in the same folder apart
        self.name = f"{folder}#{model_fingerprint(folder)[:16]}"
        self.max_tokens = max_tokens
        self.model, self.tokenizer = load_model(folder)

    def complete(self, prompts: Sequence[str]) -> list[str]:
        """Greedy answers, in order, through mlx-lm's batch generator."""
        if not prompts:
            return []
        return greedy_answers(self.model, self.tokenizer, prompts, max_tokens=self.max_tokens)
