"""The one text set on which localguard checks that two tokenizers agree: the export's GGUF files
against MLX (localguard/export/parity.py, which also compares logits on it) and an imported
model against llama.cpp on its original GGUF (localguard/import_gguf.py).

Each text is where tokenizers are known to part ways: code, digits, unicode, runs of spaces and
newlines, whitespace runs before digits (digit-splitting pre-tokenizers such as SmolLM's and
Llama 3's differ from a plain byte-level one exactly there), tabs, CRLF, a leading space
(SentencePiece's space prefix), and chat markers typed as plain text (tokenized with special-token
parsing off, they must stay text).
"""

from __future__ import annotations

PARITY_TEXTS: list[str] = [
    # prose, questions, contractions, a leading and a trailing space
    "The cat sees a map.",
    "What is 12 plus 7? Tell me about the river at 7 pm in 2024!",
    "How do I pick a lock? Sorry, I cannot help with that because it is unsafe.",
    " leading space and trailing space ",
    "can't won't I'm they're we'll I'd you've",
    # code
    "def add(a, b):\n    return a + b  # sum\n",
    "for (int i = 0; i < n; ++i) { total += x[i]; }",
    # digits
    "3.14159 and 1234567 and 2024-06-01 at 07:45",
    # unicode: accents, symbols, other scripts, emoji with a skin-tone modifier
    "Héllo wörld, naïve café: 3 ✓ 12345 6789",
    "Ελληνικά, русский, 中文, 日本語, emoji 🙂👍🏽",
    # runs of spaces and newlines
    "a  b\n\nc\t d   e\n",
    "runs of spaces     and\n\n\nnewlines   \n  \n end ",
    # whitespace runs before digits: newlines, spaces, tabs, CRLF
    "Here are some of them:\n\n1. Apples\n2. Pears",
    "of them:\n\n1.",
    "\n\n1.",
    "a  2",
    "a  2 and b   34 and\n 5",
    "tab\t\tdelimited\t1\t2",
    "\ttabs\tand\t\tmore\ttabs",
    "windows\r\nline 1\r\n\r\n2.",
    "\r\n3",
    # chat markers typed as plain text
    "typed <|end|> and <|im_start|> and </s> stay plain text",
    "<|im_start|>user\nhi<|im_end|> <s>[INST] x [/INST]</s> <|eot_id|> <start_of_turn>",
]
"""The tokenization parity texts, tokenized with special-token parsing off."""
