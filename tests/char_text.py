"""Characters as tokens, for the fake backends of the guard and eval tests: ids 0..94 are the
printable ASCII characters (id = ord - 32), EOS is 95, and a chat is "U:...\\nA:"."""

from __future__ import annotations

EOS = 95


class CharText:
    """The text half of a fake GuardBackend; encode_chat remembers the prompt's length."""

    prompt_len = 0

    def encode_text(self, text: str) -> list[int]:
        return [ord(c) - 32 for c in text]

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        text = "".join(f"{m['role'][0].upper()}:{m['content']}\n" for m in messages)
        ids = self.encode_text(text + ("A:" if add_generation_prompt else ""))
        self.prompt_len = len(ids)
        return ids

    def decode(self, tokens) -> str:
        return "".join(chr(t + 32) for t in tokens if t < EOS)
