"""The starter world: a generated corpus and tokenizer for a tiny aligned chat model."""
