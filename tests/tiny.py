"""The tiny fixtures live in the library (lingua_ray/models/tiny.py); ``from tiny import ...`` keeps working."""

from lingua_ray.models.tiny import SPECIALS, TINY_TYPES, VOCAB, tiny_config, tiny_model, tiny_tokenizer

__all__ = ["SPECIALS", "TINY_TYPES", "VOCAB", "tiny_config", "tiny_model", "tiny_tokenizer"]
