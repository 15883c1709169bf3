"""Canonical examples, the shared prompt renderer, and the offset-based collator."""
