"""Entry point: `python -m lapdog_jax.main --config=configs/joint_grpo.py --workdir=runs/demo`."""

from __future__ import annotations

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
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
    """Runs training (and periodic evaluation) for the given config."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lapdog_jax import train  # after flag parsing: keeps `--help` fast

    logging.get_absl_handler().addFilter(_QuietLibraries())

    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.mode}"
    logging.info("workdir: %s", workdir)
    train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
