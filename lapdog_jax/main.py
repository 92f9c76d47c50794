"""Entry point: `python -m lapdog_jax.main --config=configs/joint_grpo.py --workdir=runs/demo`."""

from __future__ import annotations

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/joint_grpo.py[:preset].", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, logs, eval files and config.json go here "
    "(default: runs/<mode>).")


class _QuietLibraries:
    """Keeps INFO chatter of checkpointing internals out of the run's log."""

    def filter(self, record) -> bool:
        """Passes warnings and anything not from orbax."""
        # Python's level numbers: absl.logging.WARNING is absl's verbosity (-1), not 30.
        return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def _unknown_field(error: BaseException, argv: list[str]) -> str:
    """Names the override with no such config field, with ml_collections' closest-name hint."""
    while error.args and isinstance(error.args[0], BaseException):  # ml_collections nests
        error = error.args[0]
    key, _, hint = str(error.args[0] if error.args else error).partition("\n")
    key = key.strip("'\"")
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.")
           and key in a.split("=")[0].split(".")]
    return f"{bad[0] if bad else key}: no such config field. {hint}".strip()


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, plus config overrides naming a field the config lacks (a typo)
    reported as a one-line usage error instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError) as e:  # `--config.a.b=v` with no field a.b
        message = _unknown_field(e, argv)
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def main(argv):
    """Runs training (and periodic evaluation) for the given config."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lapdog_jax import experiment, train  # after flag parsing: keeps `--help` fast
    from lapdog_jax.data import DataError

    logging.get_absl_handler().addFilter(_QuietLibraries())

    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.mode}"
    try:
        train.train_and_evaluate(config, workdir)
    except (experiment.ConfigError, DataError, train.NonFiniteError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
