"""The one exception type for user mistakes: main turns it into one line and exit status 2."""

import contextlib
import sys
from collections.abc import Iterator


class ConfigError(ValueError):
    """A mistake in the command line, the experiment or the data that the user can fix."""


class RunStopped(RuntimeError):
    """The run stopped on purpose, its saved checkpoints intact: one line and exit status 1."""


class TrainingDiverged(RunStopped):
    """The loss became NaN or infinite: the run stops rather than train on garbage."""


class CheckpointFailed(RunStopped):
    """Saving a checkpoint failed on every try: the run stops rather than train on unsaved."""


def one_line(error: BaseException) -> str:
    """`ErrorType: first line of its message`, for reporting an error that is survived."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def check_choices(config: object, group: str, choices: dict[str, tuple[str, ...]]) -> None:
    """Raises a ConfigError naming the first field of `config` whose value is not allowed."""
    for key, allowed in choices.items():
        value = getattr(config, key)
        if value not in allowed:
            raise ConfigError(f"{group}.{key}={value!r}: expected one of {', '.join(allowed)}")


@contextlib.contextmanager
def user_errors_exit_2() -> Iterator[None]:
    """A ConfigError inside becomes `error: ...` on stderr and exit status 2, no traceback:
    for the command-line tools, as lmlib.main does."""
    try:
        yield
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
