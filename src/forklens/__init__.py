"""forklens: what RL does to a language model at the token level."""

__version__ = "0.1.0"
