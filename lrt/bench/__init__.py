"""Benchmarks that back lrt's performance claims with numbers (`lrt bench NAME`; flags in `lrt.cli.bench`).

One module per benchmark; each imports torch/transformers or the trainer only when it runs.
"""
