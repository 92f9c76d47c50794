"""Entry point: `python -m lapdog_jax.main --config=configs/joint_grpo.py --workdir=runs/demo`."""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from lapdog_jax import cli, interrupt
from lapdog_jax.config_lib import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/joint_grpo.py[:preset].", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, logs, eval files and config.json go here "
    "(default: runs/<mode>).")
# SIGINT / SIGTERM from the command's first moment: in set-up they wait for a point where the
# run can stop (interrupt.py); installed when run as a command.
_STOP = interrupt.StopRequest()


def main():
    """Runs training (and periodic evaluation) for the given config."""
    try:
        config = _CONFIG.value
        mode = config.mode  # a config file that did not load raises its error here
    except OSError as e:
        raise ConfigError(f"--config={flags.FLAGS['config'].config_filename}: cannot load "
                          f"the config file ({str(e).strip().splitlines()[-1].strip()})"
                          ) from None
    from lapdog_jax import train  # after flag parsing: keeps `--help` fast

    workdir = _WORKDIR.value or f"runs/{mode}"
    train.train_and_evaluate(config, workdir, stop=_STOP if _STOP.installed else None)


if __name__ == "__main__":
    _STOP.install()
    flags.mark_flags_as_required(["config"])
    cli.run(main)
