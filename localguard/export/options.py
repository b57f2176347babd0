"""The export's options: the recipe's [export] section, the guard settings the files carry,
and the paths; every default is the recipe schema's."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from localguard.recipe import schema_field


@dataclass
class ExportOptions:
    """The recipe's [export] section (and the guard settings the files carry) plus paths."""

    model: Path
    out: Path
    adapter: Path | None = None
    head: Path | None = None
    quant: list[str] = schema_field("export", "quant")
    keep_output_q8: bool = schema_field("export", "keep_output_q8")
    lora_only: bool = schema_field("export", "lora_only")
    base_gguf: Path | None = schema_field("export", "base_gguf")
    calibration: Path | None = schema_field("export", "calibration")
    calibration_size: int = schema_field("export", "calibration_size")
    max_seq_length: int = schema_field("data", "max_seq_length")
    tau: int = schema_field("guard", "tau")
    refusal_prefix: str = schema_field("guard", "refusal_prefix")
    threads: int = schema_field("export", "threads")
    seed: int = schema_field("run", "seed")

    def describe(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def option_names() -> list[str]:
    return [f.name for f in fields(ExportOptions)]


def quant_types(values: list[str]) -> list[str]:
    """--quant values (repeatable, each may be comma-separated) as llama.cpp type names, in
    order, without F16 (always written) and without repeats."""
    from localguard.backends.llamacpp.quantize import file_type

    out: list[str] = []
    for value in values:
        for name in str(value).split(","):
            name = name.strip().upper()
            if not name:
                continue
            file_type(name)  # an unknown name is an error that lists the known ones
            if name != "F16" and name not in out:
                out.append(name)
    return out


def threads_arg(threads: int) -> int | None:
    """The threads option as llama.cpp takes it: None (its own choice) for 0 or less."""
    return threads if threads and threads > 0 else None
