"""Optuna sweeps (`python train.py hparams_search=optuna`): the value a trial returns, failed
trials that do not end the sweep, and the table of trials written when the sweep ends.

Hydra's Optuna sweeper (hydra-optuna-sweeper, `pip install -e .[sweep]`) asks the study for
trials, launches them as jobs and tells the study each job's return value. A job that raises
becomes a failed trial, and with `max_failure_rate: 1.0` the sweep goes on; but mss turns user
errors (a NaN loss is one) into `SystemExit`, which would end the whole sweep, and the sweeper
cannot record a NaN return value (it crashes telling the study). `run_trial` and
`objective` turn both into an ordinary exception of that one job.

`TrialTable` is a Hydra callback (configured in conf/hparams_search/optuna.yaml). When the
sweep ends it reads the study from its storage, the whole study, earlier runs of the sweep
folder included, and writes `trials.csv` and `trials.md` (every trial, its state, value,
parameters, folder and the reason it failed; the best trial and the command that repeats it)
into the sweep folder. When no trial of the study completed, the command then ends with one error
line that points to the table (the sweeper, hydra_plugins/mss_sweeper, lets such a sweep end).
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mss.errors import ConfigError, NonFiniteError

log = logging.getLogger(__name__)
T = TypeVar("T")

FAILURE_FILE = "trial_failed.txt"


class TrialFailed(RuntimeError):
    """A sweep trial that failed; its message is the one line that says why."""


def sweeper_records_failures() -> bool:
    """Whether this job is a trial of a sweep that records failed jobs and goes on
    (`hydra.sweeper.max_failure_rate > 0`, as hparams_search=optuna sets)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hydra = HydraConfig.get()
    return hydra.mode == RunMode.MULTIRUN and hydra.sweeper.get("max_failure_rate", 0) > 0


def run_trial(task: Callable[[], T]) -> T:
    """Run a sweep job's `task`. In a trial of a sweep that records failed jobs, any exception
    (a user error, a NaN, out of memory, a bug) fails this trial only: one line in the job's log
    (bugs with their traceback) and in `<job folder>/trial_failed.txt`, then `TrialFailed`,
    which the sweeper records."""
    if not sweeper_records_failures():
        return task()
    from hydra.core.hydra_config import HydraConfig

    from mss.cli import user_error_message

    try:
        return task()
    except Exception as error:
        user_message = user_error_message(error)
        message = user_message or f"{type(error).__name__}: {error}".strip().splitlines()[0]
        log.error("trial failed: %s", message, exc_info=user_message is None)
        output_dir = Path(HydraConfig.get().runtime.output_dir)
        (output_dir / FAILURE_FILE).write_text(message + "\n")
    # Raised outside the handler: with the failed run's error as its context, mss.cli would
    # still see a user error in the chain (and end the whole sweep), and the run's frames (its
    # model, an out-of-memory error's tensors) would stay alive into the next trial.
    raise TrialFailed(message)


def objective(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value of `optimized_metric` that a sweep job returns (None when there is none).

    A metric the run does not log is a config mistake; a NaN or Inf value (a collapsed model
    with silent estimates has a NaN SDR) would crash the Optuna sweeper, so it fails the trial.
    """
    if not name:
        return None
    if name not in metrics:
        known = ", ".join(sorted(k for k in metrics if "/" in k))
        raise ConfigError(f"optimized_metric={name}: the run logged no such metric ({known})")
    value = float(metrics[name])
    if not math.isfinite(value):
        raise NonFiniteError(f"optimized_metric {name} is {value}: nothing to compare")
    return value


class TrialTable(Callback):
    """Hydra callback: the sweep folder exists before the study's SQLite file is created in it,
    and `trials.csv` / `trials.md` are written there when the sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the sweeper opens `sqlite:///<sweep dir>/optuna.db` before any job creates the folder
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        _pin_sweep_time(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import optuna

        sweeper = config.hydra.sweeper
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = trial_rows(study, sweep_dir)
        write_tables(
            rows,
            sweep_dir,
            metric=config.get("optimized_metric") or "value",
            direction=str(sweeper.direction),
        )
        log.info("trial table: %s", sweep_dir / "trials.md")
        if not any(row["state"] == "COMPLETE" for row in rows):
            from mss.cli import exit_with_error

            failed = sum(row["state"] == "FAIL" for row in rows)
            exit_with_error(
                Path(sys.argv[0]).name,
                f"no trial of the sweep completed ({failed} failed): why each failed is in "
                f"{sweep_dir / 'trials.md'}",
            )


def _pin_sweep_time(config: DictConfig) -> None:
    """Resolve each `${now:...}` of `hydra.sweep.subdir` once, in the sweep's config.

    Every job copies the sweep config's resolver cache, so the trials of this run of the sweep
    share one time in their folder names (`<time>_<job number>`): a later run of the same sweep
    folder, which numbers its jobs from 0 again, writes beside them instead of over them, and a
    job that SLURM requeues in a new process finds its folder again.
    """
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]
    for pattern in set(re.findall(r"\$\{now:([^}]*)\}", str(subdir))):
        # a node whose root is `config`: resolving it caches the value in `config`
        _ = OmegaConf.create({"t": f"${{now:{pattern}}}"}, parent=config).t


def trial_rows(study, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, parameters, the overrides the sweeper gave it
    (parameters and fixed ones), its job folder and why it failed."""
    folders = _job_folders(sweep_dir)
    taken: set[Path] = set()
    rows = []
    for trial in sorted(study.trials, key=lambda t: t.number):
        # the sweeper's overrides for a trial: f"{name}={value}" of its parameters, then the
        # fixed ones it keeps as user attributes; without hparams_search= they repeat the trial
        params = [f"{k}={v}" for k, v in trial.params.items()]
        fixed = [
            f"{k}={v}" for k, v in trial.user_attrs.items() if k.lstrip("+~") != "hparams_search"
        ]
        folder = next(
            (f for f, overrides in folders if f not in taken and set(params) <= overrides), None
        )
        if folder is not None:
            taken.add(folder)
        failure = folder / FAILURE_FILE if folder else None
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                **{k: v for k, v in trial.params.items()},
                "folder": str(folder.relative_to(sweep_dir)) if folder else "",
                "error": failure.read_text().strip() if failure and failure.is_file() else "",
                "overrides": " ".join(shlex.quote(o) for o in params + fixed),
            }
        )
    return rows


def _job_folders(sweep_dir: Path) -> list[tuple[Path, set[str]]]:
    """The job folders of the sweep (those with `.hydra/overrides.yaml`) with their overrides,
    oldest first: the order in which trials were numbered."""
    found = []
    for overrides in sweep_dir.glob("*/.hydra/overrides.yaml"):
        folder = overrides.parent.parent
        found.append((overrides.stat().st_mtime, folder, set(OmegaConf.load(overrides))))
    return [(folder, items) for _, folder, items in sorted(found, key=lambda x: x[:2])]


def write_tables(rows: list[dict[str, Any]], sweep_dir: Path, metric: str, direction: str) -> None:
    """`trials.csv` (all columns) and `trials.md` (the table and the best trial)."""
    import pandas as pd

    table = pd.DataFrame(rows).rename(columns={"value": metric})
    table.to_csv(sweep_dir / "trials.csv", index=False)
    done = table[table["state"] == "COMPLETE"]
    maximize = "max" in direction.lower()
    lines = [f"# Trials ({len(table)}, {len(done)} complete; {metric}, {direction.lower()})", ""]
    if len(done):
        best = done.loc[done[metric].idxmax() if maximize else done[metric].idxmin()]
        lines += [
            f"Best: trial {best['trial']}, {metric} = {best[metric]:.4g}, folder "
            f"`{best['folder']}`. Train it again:",
            "",
            f"    python train.py {best['overrides']}",
            "",
        ]
    shown = [c for c in table.columns if c != "overrides"]
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in shown) + " |")
    (sweep_dir / "trials.md").write_text("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")
