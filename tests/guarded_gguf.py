"""The test-size starter model as a GGUF with two random head rows (stored at the export's 1/16
scale, bias and thresholds in the metadata), so a guard's numbers are the file's own: for the
llama.cpp guard backend, `localguard chat` and `localguard serve` tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SCALE = 1 / 16
BIAS = np.array([0.25, -0.5])
THRESHOLDS = [0.0, 0.3]
PREFIX = "I can't help with that."


def write_guarded_gguf(starter_model: Path, out: Path) -> Path:
    from localguard.backends.llamacpp import gguf_keys as keys
    from localguard.backends.llamacpp.convert import ExtraRow, convert_to_gguf

    hidden = json.loads((starter_model / "config.json").read_text())["hidden_size"]
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(2, hidden)) * 3 / np.sqrt(hidden)
    rows = [ExtraRow(name, (weight[k] * SCALE).astype(np.float32), float(BIAS[k]))
            for k, name in enumerate(["query", "response"])]  # fmt: skip
    meta = {keys.HEAD_THRESHOLDS: THRESHOLDS, keys.HEAD_SCALE: [SCALE, SCALE],
            keys.GUARD_TAU: 2, keys.GUARD_REFUSAL_PREFIX: PREFIX}  # fmt: skip
    convert_to_gguf(starter_model, out, rows, outtype="f32", metadata=meta)
    return out
