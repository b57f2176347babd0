"""`localguard export`: a fine-tuned MLX model with its safety head as GGUF files for llama.cpp.

The stage loads the base with its adapter in MLX, records a reference (logits on a fixed text
set, head logits on calibration conversations), fuses the adapter into a full-precision copy,
converts it to F16 GGUF with the head's rows appended to the output matrix, quantizes it with
llama.cpp, measures every file against MLX, re-calibrates the head biases into each file's
metadata and writes export.json with the parity report.

- options: ExportOptions (defaults from the recipe schema) and the --quant names;
- inputs: checks of the model, adapter and head, and the calibration conversations;
- parity: the MLX reference, the measurement of one file, re-calibration and the targets;
- stage: export() itself, the full and the LoRA-only paths;
- report: the printed parity table.
"""

from localguard.export.options import ExportOptions
from localguard.export.report import format_report
from localguard.export.stage import export

__all__ = ["ExportOptions", "export", "format_report"]
