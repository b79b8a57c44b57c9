"""Entry points (`train.py`, `eval.py`, `separate.py`) with one line for every user mistake.

`@entry_point("train")` replaces `@hydra.main(...)`. Before Hydra runs, the command line is
composed once as a dry run, so an unknown config name or key becomes one line naming it and
the choices; Hydra's own message is a screen of search paths. While the task runs, a
`mss.errors.UserError` anywhere in the chain of a raised exception (also inside Hydra's
instantiation errors and data-loader worker errors), or a bad value in a config that Hydra
instantiates, becomes `<script>: error: <message>` and exit status 2. Everything else is a bug
and keeps its traceback. `HYDRA_FULL_ERROR=1` turns both off, for developers.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from mss.errors import ConfigError, UserError
from mss.utils.paths import ensure_writable_dir

__all__ = ["entry_point", "user_error_message", "user_errors"]

EXIT_USER_ERROR = 2
# Config values that fail inside the constructor Hydra calls are the user's to fix.
_CONFIG_VALUE_ERRORS = (ValueError, TypeError, FileNotFoundError)
# The optional extras that install the Hydra plugins of these config groups (pyproject.toml).
_PLUGIN_EXTRAS = {"hydra/launcher": "slurm", "hydra/sweeper": "sweep"}


def full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def entry_point(config_name: str) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """Decorate a script's `main(cfg)` like `@hydra.main`, with one-line user errors.

    The config folder is `conf/` beside the script. Scripts keep `if __name__ == "__main__":
    main()`; tests call the undecorated task through `main.task`.
    """

    def decorate(task: Callable[[Any], Any]) -> Callable[[], Any]:
        import hydra

        script = Path(inspect.getfile(task)).name
        conf_dir = Path(inspect.getfile(task)).resolve().parent / "conf"

        @functools.wraps(task)
        def guarded(cfg: Any) -> Any:
            with user_errors(script):
                return task(cfg)

        hydra_main = hydra.main(
            version_base="1.3", config_path=str(conf_dir), config_name=config_name
        )(guarded)

        @functools.wraps(task)
        def run() -> Any:
            if not full_error():
                with user_errors(script):
                    check_command_line(conf_dir, config_name, sys.argv[1:])
            return hydra_main()

        run.task = task  # type: ignore[attr-defined]
        return run

    return decorate


@contextmanager
def user_errors(script: str) -> Iterator[None]:
    """Turn a user error raised inside the block into one line on stderr and exit status 2."""
    try:
        yield
    except Exception as error:
        message = user_error_message(error)
        if message is None or full_error():
            raise
        exit_with_error(script, message)


def exit_with_error(script: str, message: str) -> NoReturn:
    """`<script>: error: <message>` on stderr, and exit status 2."""
    sys.stderr.write(f"{script}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_USER_ERROR) from None


def user_error_message(error: BaseException) -> str | None:
    """The message to show for `error` if it is the user's mistake, else None (a bug)."""
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        OverrideParseException,
    )
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            return _unwrap_worker_message(current)
        if isinstance(current, InstantiationException) and current.__cause__ is not None:
            cause = current.__cause__
            if isinstance(cause, UserError):
                return _unwrap_worker_message(cause)
            key = re.search(r"full_key: (\S+)", str(current))
            target = re.search(r"target '([^']+)'", str(current))
            where = key.group(1) if key else (target.group(1) if target else "config")
            if isinstance(cause, _CONFIG_VALUE_ERRORS):
                return f"{where}: {_one_line(str(cause))}"
            # anything else a constructor raises on these values is most likely about them too
            return f"{where}: {type(cause).__name__}: {_one_line(str(cause))}"
        if isinstance(current, ConfigCompositionException | OverrideParseException):
            return _composition_message(current)
        if isinstance(current, InterpolationResolutionError | MissingMandatoryValue):
            return _one_line(str(current))
        current = current.__cause__ or current.__context__
    return None


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _unwrap_worker_message(error: UserError) -> str:
    """The original message of an error re-raised by a DataLoader worker (which prepends the
    worker's traceback to it)."""
    text = str(error)
    if "Original Traceback" in text:
        name = f"{type(error).__module__}.{type(error).__qualname__}: "
        at = text.rfind(name)
        if at >= 0:
            text = text[at + len(name) :]
    return text.strip()


def _composition_message(error: BaseException, conf_dir: Path | None = None) -> str:
    """Hydra's composition error in one line: the unknown name and the choices, or the key."""
    text = str(error) + (f"\n{error.__cause__}" if error.__cause__ else "")
    missing = re.search(r"Could not (?:find|load) '([^']+)/([^'/]+)'", text)
    if missing:
        group, name = missing.groups()
        options = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
        if options:
            choices = ", ".join(o.strip() for o in options.group(1).splitlines())
        elif conf_dir is not None:  # Hydra lists them for a plain choice, not inside a list
            choices = ", ".join(sorted(p.stem for p in (conf_dir / group).glob("*.yaml")))
        else:
            choices = ""
        hint = f"; choose one of: {choices}" if choices else ""
        if group in _PLUGIN_EXTRAS:  # conf/hydra/launcher/slurm.yaml needs submitit_slurm, ...
            hint += (
                f"; Hydra's plugins for it come with pip install -e '.[{_PLUGIN_EXTRAS[group]}]'"
            )
        return f"unknown {group} '{name}' (no conf/{group}/{name}.yaml){hint}"
    unknown_key = re.search(r"Could not override '([^']+)'", text)
    if unknown_key and "not in struct" in text:
        key = unknown_key.group(1)
        return f"unknown config key '{key}' (check the spelling; add a new key with +{key}=...)"
    lines = []
    for line in text.splitlines():
        if line.startswith("Config search path") or line.strip().startswith("provider="):
            continue
        lines.append(line)
    return _one_line("\n".join(lines))


def check_command_line(conf_dir: Path, config_name: str, argv: Sequence[str]) -> None:
    """Compose the config the command line asks for (each value of a sweep once), and check
    that the run folder can be created; raise the composition error or a `UserError`.

    Only plain runs and sweeps are checked; Hydra's own options (`--help`, `--cfg`, `-cp`, ...)
    are left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    args, _ = get_args_parser().parse_known_args(list(argv))
    if any(
        getattr(args, flag, None)
        for flag in (
            "help", "hydra_help", "info", "shell_completion", "config_path", "config_name",
            "config_dir", "experimental_rerun", "cfg",
        )
    ):  # fmt: skip
        return
    parsed = OverridesParser.create().parse_overrides(args.overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [o for o in parsed if o.is_sweep_override() and o.is_discrete_sweep()]
    values = [list(o.sweep_string_iterator()) for o in sweeps]
    first = [f"{o.get_key_element()}={v[0]}" for o, v in zip(sweeps, values, strict=True) if v]
    variants = [fixed + first]
    for i, (override, choices) in enumerate(zip(sweeps, values, strict=True)):
        for choice in choices[1:]:
            variant = list(first)
            variant[i] = f"{override.get_key_element()}={choice}"
            variants.append(fixed + variant)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for variant in variants:
            try:
                cfg = compose(config_name, overrides=variant, return_hydra_config=True)
            except ConfigCompositionException as error:
                raise ConfigError(_composition_message(error, conf_dir)) from error
    run_dir = cfg.hydra.sweep.dir if args.multirun else cfg.hydra.run.dir
    key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
    ensure_writable_dir(run_dir, key, create=False)
