"""User-facing errors.

Anything raised as :class:`ForklensError` is a problem with the user's input (a path, a file, a
config value). The CLI prints its message and exits with status 2, without a traceback. Messages say
what was wrong, where (file, line, key) and what was expected.
"""


class ForklensError(Exception):
    """A problem with user input that the CLI reports without a traceback."""


class ConfigError(ForklensError):
    """An invalid configuration file or override."""


class ModelLoadError(ForklensError):
    """A model directory that is missing or is not a causal language model."""


class DataError(ForklensError):
    """A dataset or prompts file that is empty, malformed or unusable."""


class ForklensWarning(UserWarning):
    """A legal but degenerate setting or input (group size 1, characters the tokenizer cannot encode,
    an empty prompt): the run goes on, but the user should know. The CLI prints it as one line."""
