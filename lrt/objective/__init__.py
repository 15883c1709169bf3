"""The training objective: weighted loss terms over global denominators (objective), and the modules
DDP / DeepSpeed wrap that turn a batch into the loss (module: listwise first-token and LM; lipo_k:
sequence log-probs of K answers; pointwise: yes/no pair scores). Below lrt.families and lrt.train:
imports config, losses, scoring, data and modeling only."""
