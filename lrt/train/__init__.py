"""Training: the Trainer and its parts (data, step, checkpoint store, preemption, evaluation,
console, metrics). The trainer trains: `Trainer(recipe).fit()` returns the run (TrainResult); the
composition train -> export -> plots is lrt.workflows.run (also `lrt.train(recipe)`, lrt/__init__.py).
"""
