"""forklens: what RL does to a language model at the token level."""

__version__ = "0.1.0"

from forklens import models  # noqa: E402,F401  (registers forklens's model classes with transformers' Auto classes)
