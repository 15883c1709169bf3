"""A training run as `lrt train` and `lrt.train(recipe)` run it: the Trainer trains (lrt.train); this
workflow adds what comes after and around it: RUN/final (lrt.export, under `eval.select_best` the best
checkpoint) and the plots (lrt.plot: the overview refreshed after every evaluation, all at the end)."""
from __future__ import annotations

import os
from typing import Any

from lrt.config import Recipe
from lrt.train import checkpoint as ckpt
from lrt.train.loop import TrainResult, Trainer


class Run(Trainer):
    """A Trainer whose `fit` also exports RUN/final (train.save_final) and writes the run's plots."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe, on_eval=self._plot_overview)

    def _plot_overview(self, res: dict[str, Any]) -> None:
        from lrt.plot import write_run_plots

        write_run_plots(self.out, kinds=("overview",))

    def _export(self, res: TrainResult) -> None:
        """Every rank calls this (ZeRO-3 gathers collectively); a signal now lets it complete."""
        if not self.r.train.save_final:
            return
        from lrt.export import export_final

        ckpt.fault("in_final", self.step)  # test hook: a signal while final/ is about to be written
        res.final_dir = export_final(self, self.out / "final")  # the best checkpoint under eval.select_best

    def fit(self) -> TrainResult:  # type: ignore[override]  (the export is its `after`)
        res = super().fit(after=self._export)
        if self.env.is_main:
            from lrt.plot import write_run_plots

            write_run_plots(self.out)
        return res


def train(recipe: Recipe) -> TrainResult:
    """Train `recipe`, export RUN/final, write the plots; the run's lock and signal handlers never
    outlive the call."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = Run(recipe)
    try:
        res = run.fit()
    finally:
        run.release()  # the SIGTERM/SIGUSR1 handlers and the output_dir lock never outlive the run
    run.env.close()  # after a completed run only: a failed rank must not wait on its peers here
    return res
