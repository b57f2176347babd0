"""The MLX backend: loading, hidden states, LoRA training, probes, heads and generation."""
