"""What every command line shares: flag parsing, `--help`, one-line errors, exit codes,
`--verbose`, quiet logs.

Exit codes: 2 for a usage error (a bad flag or config value; the message names the flag), 1
for a failure (a bad file, named with its line; no readable checkpoint; a busy workdir; a run
that diverged; a save that failed; a lost peer process). Either is one line `error: ...` on
stderr, with no traceback unless `--verbose`. A run stopped by SIGINT (Ctrl-C) or SIGTERM ends
in one line `stopped: ...` and exits with 128 + the signal's number (130, 143).
`--help` prints the command's flags and exits 0; `--helpfull` adds every config field
(`--config.FIELD=VALUE`) with its default and comment.
"""

from __future__ import annotations

import inspect
import re
import signal
import sys

from absl import app, flags

from lapdog_jax import config_lib, logs
from lapdog_jax.config_lib import ConfigError

USAGE, FAILURE = 2, 1
USAGE_ERRORS = (ConfigError, app.UsageError, flags.Error)

_VERBOSE = flags.DEFINE_bool("verbose", False, "Show library INFO logs (orbax, JAX's backend "
                             "set-up, sacrebleu) and, on an error, its traceback.")
HELP_FLAGS = {"--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "-helpfull"}


def fail(message: str, code: int, prefix: str = "error") -> None:
    """Exits with `code` after writing `prefix: message` as one line to stderr."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    cluster = sys.modules.get("lapdog_jax.distributed")  # (imported by commands that use jax)
    if cluster is not None:  # a multi-process run ends here at once (names a lost peer)
        cluster.on_error(" ".join(lines), code, prefix)
    sys.stderr.write(f"{prefix}: {' '.join(lines)}\n")
    sys.exit(code)


def _innermost(error: BaseException) -> BaseException:
    """The exception that started a chain (ml_collections and absl wrap a config's errors)."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    while error.__context__ is not None and isinstance(error, flags.Error):
        error = error.__context__
    return error


def _flag_message(error: BaseException, argv: list[str]) -> str:
    """One line for a flag-parsing error: a config file's own error (its traceback dropped), or
    the override naming a field the config lacks, with ml_collections' closest-name hint."""
    inner = _innermost(error)
    text = str(inner).strip()
    flag = ([a for a in argv if a.startswith("--config=")] or ["--config"])[-1]
    if "Traceback (most recent call last)" in text:  # config_flags' text of get_config's error
        last = text.splitlines()[-1]
        return f"{flag}: {last.partition(': ')[2] or last}"
    if isinstance(inner, OSError):  # a config file that does not load
        return f"{flag}: cannot load the config file ({text.splitlines()[-1].strip()})"
    if isinstance(inner, AttributeError | KeyError):  # `--config.a.b=v` with no field a.b
        key, _, hint = str(inner.args[0] if inner.args else inner).partition("\n")
        key = key.strip("'\"")
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")
               and key in a.split("=")[0].split(".")]
        return f"{bad[0] if bad else key}: no such config field. {hint}"
    return str(error)


def field_comments() -> dict[str, str]:
    """{'a.b': comment} of the config fields, from the comments beside and above each
    `c.a.b = ...` line of config_lib (the one place fields are defined and explained)."""
    out, pending = {}, []
    for line in inspect.getsource(config_lib).splitlines():
        text = line.strip()
        if text.startswith("#"):
            pending.append(text[1:].strip())
            continue
        match = re.match(r"c\.([\w.]+)\s*=\s*(.*)$", text)
        if match:
            comment = match.group(2).partition("  # ")[2]
            words = " ".join(pending + [comment]).strip()
            if words:
                out.setdefault(match.group(1), words)
        pending = []
    return out


def _help_config(argv: list[str]):
    """The config whose fields --helpfull lists: --config's, else the embedded joint_grpo."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    path, _, arg = spec.partition(":")
    try:
        return config_lib.from_file(path, arg or None) if path else \
            config_lib.mode_config("joint_grpo")
    except Exception:  # noqa: BLE001 - help for a config that does not load: the schema's
        return config_lib.base_config("joint_grpo")


def help_text(argv: list[str], full: bool) -> str:
    """The command's help: its docstring, its flags and, for commands that take --config,
    a pointer to (with `full`, the list of) every config field."""
    main = sys.modules.get("__main__")
    parts = [(main.__doc__ or "").strip(), "flags:",
             flags.FLAGS.main_module_help().strip() or "  (none)",
             flags.FLAGS.module_help(__name__).strip()]
    if "config" in flags.FLAGS:
        if not full:
            parts.append("Every field of the config can be set with --config.FIELD=VALUE: "
                         "--helpfull lists them with their defaults and comments (defined in "
                         "lapdog_jax/config_lib.py).")
        else:
            config = _help_config(argv)
            comments = field_comments()
            lines = [f"config fields (--config.FIELD=VALUE; defaults of "
                     f"{config.mode}{'-' + config.preset if config.preset else ''}):"]
            for name, value in config_lib.flatten(config).items():
                lines.append(f"  --config.{name}={value!r}" + (
                    f"\n      {comments[name]}" if name in comments else ""))
            parts.append("\n".join(lines))
    return "\n\n".join(p for p in parts if p) + "\n"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with any error a one-line usage error (exit 2); --help and
    --helpfull print the help and exit 0."""
    asked = {a.split("=", 1)[0] for a in argv[1:]} & HELP_FLAGS
    if asked:
        sys.stdout.write(help_text(argv, full=bool(asked & {"--helpfull", "-helpfull"})))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        fail(_flag_message(e, argv), USAGE)


def run(main) -> None:
    """`app.run(main)` with one-line errors: `main()` takes no arguments (positional ones are
    a usage error)."""

    def wrapped(argv):
        """Runs main, turning its exceptions into `error: ...` and an exit code."""
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)", USAGE)
        try:
            with logs.console(verbose=_VERBOSE.value):
                main()
            cluster = sys.modules.get("lapdog_jax.distributed")
            if cluster is not None:  # the peers' watchdogs: this process ends normally
                cluster.finished()
        except KeyboardInterrupt as e:  # a run stopped by a signal (interrupt.Interrupted),
            if _VERBOSE.value:  # or Ctrl-C in a command that does not train
                raise
            if hasattr(e, "exit_code"):
                fail(str(e), e.exit_code, prefix="stopped")
            fail("SIGINT (Ctrl-C)", 128 + signal.SIGINT, prefix="stopped")
        except Exception as e:  # noqa: BLE001 - the one place every error ends
            if _VERBOSE.value:
                raise
            ours = (type(e).__module__.startswith(("lapdog_jax", "__main__"))
                    or isinstance(e, USAGE_ERRORS))
            message = str(e) if ours else f"{type(e).__name__}: {e}"
            fail(f"{message}" + ("" if ours else " (--verbose shows the traceback)"),
                 USAGE if isinstance(e, USAGE_ERRORS) else FAILURE)

    app.run(wrapped, flags_parser=parse_flags)
