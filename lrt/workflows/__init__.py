"""Workflows: compositions of the layers below, as the CLI and the Python API run them.

run: train -> RUN/final export -> plots (`lrt train`, `lrt.train(recipe)`); quickstart: the demo
world -> a run -> the exported model reloaded and compared (`lrt quickstart`).
"""
