"""The one exception type for user mistakes: main turns it into one line and exit status 2."""


class ConfigError(ValueError):
    """A mistake in the command line, the experiment or the data that the user can fix."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops rather than train on garbage."""
