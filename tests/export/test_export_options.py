"""The export's options (localguard.export.options): defaults from the recipe schema, the
--quant names and the thread count llama.cpp gets."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from localguard.errors import InputError
from localguard.export.options import ExportOptions, option_names, quant_types, threads_arg
from localguard.recipe import SCHEMA

SCHEMA_KEYS = {
    "quant": ("export", "quant"),
    "keep_output_q8": ("export", "keep_output_q8"),
    "lora_only": ("export", "lora_only"),
    "base_gguf": ("export", "base_gguf"),
    "calibration": ("export", "calibration"),
    "calibration_size": ("export", "calibration_size"),
    "threads": ("export", "threads"),
    "max_seq_length": ("data", "max_seq_length"),
    "tau": ("guard", "tau"),
    "refusal_prefix": ("guard", "refusal_prefix"),
    "seed": ("run", "seed"),
}


def test_defaults_are_the_recipe_schema_defaults() -> None:
    opts = ExportOptions(model=Path("m"), out=Path("o"))
    for name, (section, key) in SCHEMA_KEYS.items():
        assert getattr(opts, name) == SCHEMA[section][key].default, name
    opts.quant.append("Q2_K")  # a list default is a fresh copy
    assert ExportOptions(model=Path("m"), out=Path("o")).quant == SCHEMA["export"]["quant"].default
    required = [
        f.name
        for f in fields(ExportOptions)
        if f.default is MISSING and f.default_factory is MISSING
    ]
    assert required == ["model", "out"]


def test_every_export_recipe_key_is_an_option() -> None:
    """The runner passes the recipe's [export] keys that are option names; none is lost."""
    assert set(SCHEMA["export"]) - {"enabled"} <= set(option_names())
    assert option_names()[:4] == ["model", "out", "adapter", "head"]


def test_quant_types() -> None:
    pytest.importorskip("llama_cpp")
    assert quant_types(["Q8_0,q4_k_m", "F16", "Q8_0"]) == ["Q8_0", "Q4_K_M"]
    assert quant_types([]) == []
    with pytest.raises(InputError, match="not a llama.cpp file type; known: .*Q4_K_M"):
        quant_types(["Q4_K_N"])


def test_threads_arg() -> None:
    assert threads_arg(0) is None and threads_arg(-1) is None
    assert threads_arg(3) == 3
