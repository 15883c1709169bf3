"""Tiny offline models and tokenizers for tests, smoke runs and benchmarks (no hub access)."""
