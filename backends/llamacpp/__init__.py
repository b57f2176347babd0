"""The llama.cpp backend: quantization and guarded generation on GGUF files."""
