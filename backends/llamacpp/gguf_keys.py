"""The GGUF metadata keys localguard writes and reads: one home for the exporter's writer and the
llama.cpp runtime's reader, as gguf-py's constants.py is for llama.cpp's own keys.

The head's output rows sit after the vocabulary in the output matrix; these keys name them, give
their token ids, biases, thresholds and the scale their weights were stored at, and carry the
guard's settings so `localguard chat MODEL.gguf` needs no other file.

Which of llama.cpp's own keys (gguf-py's names) an import records from its source and an export
writes back is decided here too: the provenance (general.*) and the tokenizer switches.
"""

from __future__ import annotations

import gguf

KEY_PREFIX = "localguard."
VERSION = "localguard.version"

HEAD_NAMES = "localguard.head.names"
HEAD_TOKEN_IDS = "localguard.head.token_ids"
HEAD_BIAS = "localguard.head.bias"
HEAD_THRESHOLDS = "localguard.head.thresholds"
HEAD_BIAS_SHIFT = "localguard.head.bias_shift"
HEAD_SCALE = "localguard.head.scale"
HEAD_MODE = "localguard.head.mode"
HEAD_ROW_KEYS = (
    HEAD_NAMES,
    HEAD_TOKEN_IDS,
    HEAD_BIAS,
    HEAD_THRESHOLDS,
    HEAD_BIAS_SHIFT,
    HEAD_SCALE,
)
"""The per-row keys of the head (one value per row); the runtime reads them into a HeadSpec."""

HEAD_CLS_TOKEN = "localguard.head.cls_token_id"
"""A CLS head (mode "cls"): the control token whose input embedding row is the CLS vector; the
head's rows are read from its logits, not from the tokens' (gguf_runtime.GGUFModel.cls)."""
HEAD_CLS_RULE = "localguard.head.cls_rule"
"""A CLS head's attention windows, [r1, r2, r3] (localguard/cls_token.py: ClsRule)."""

GUARD_TAU = "localguard.guard.tau"
GUARD_REFUSAL_PREFIX = "localguard.guard.refusal_prefix"

HEAD_ROW_SCALE = 1 / 16
"""The head's rows are stored at this fraction of its weights (HEAD_SCALE; readers divide by it).
Stock llama.cpp tools cannot mask the rows, and at full size they would take about 30 % of the
probability mass on the starter demo (the hidden state leans hard into the safety direction); at
1/16 about 0.04 %, like any unremarkable token. A power of two: the F16 rows keep every mantissa
bit."""


GENERAL_PREFIX = "general."
FILE_KEYS = frozenset(
    {
        gguf.Keys.General.ARCHITECTURE,
        gguf.Keys.General.FILE_TYPE,
        gguf.Keys.General.QUANTIZATION_VERSION,
        gguf.Keys.General.ALIGNMENT,
    }
)
"""general.* keys that describe one file (its layout and weight types), not the model: never
carried from a source into an export; every other general.* key is provenance (name, licence,
organization, base models, languages, ...) and travels."""

TOKENIZER_FLAGS = (
    gguf.Keys.Tokenizer.ADD_BOS,
    gguf.Keys.Tokenizer.ADD_EOS,
    gguf.Keys.Tokenizer.ADD_PREFIX,
)
"""Tokenizer switches an import records as its source has them (absent ones stay absent) and
an export of that import writes back unchanged."""
