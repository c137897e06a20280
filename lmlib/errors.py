"""The one exception type for user mistakes: main turns it into one line and exit status 2."""


class ConfigError(ValueError):
    """A mistake in the command line, the experiment or the data that the user can fix."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops rather than train on garbage."""


def check_choices(config: object, group: str, choices: dict[str, tuple[str, ...]]) -> None:
    """Raises a ConfigError naming the first field of `config` whose value is not allowed."""
    for key, allowed in choices.items():
        value = getattr(config, key)
        if value not in allowed:
            raise ConfigError(f"{group}.{key}={value!r}: expected one of {', '.join(allowed)}")
