"""hydra-optuna-sweeper's sweeper, for a sweep in which no trial completes.

The package's sweeper reads `study.best_trial` when its trials are done, and Optuna raises there
when none completed, so Hydra ends the command with a traceback and never calls the callbacks'
`on_multirun_end`, which writes the table of trials and why each failed (mss.sweep.TrialTable).
This sweeper ends such a sweep normally; `TrialTable` then writes the table and ends the command
with one error line. Hydra loads sweepers only from the `hydra_plugins` package, hence its home.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # without the `sweep` extra Hydra scans this module on every run: stay quiet
    OptunaSweeper = None

if OptunaSweeper is not None:

    class MssOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: list[str]) -> None:
            try:
                return super().sweep(arguments)
            except ValueError:
                import optuna

                impl = self.sweeper
                if impl.storage is None:  # an in-memory study is gone: no table to write
                    raise
                study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
                if study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
                    raise
                log.error("no trial of the study completed")
                return None
