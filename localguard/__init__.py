"""localguard: safe local fine-tuning."""

__version__ = "0.1.0"
