"""The one exception type for user mistakes: main turns it into one line and exit status 2."""


class ConfigError(ValueError):
    """A mistake in the command line, the experiment or the data that the user can fix."""
