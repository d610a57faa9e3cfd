"""Model organisms: tiny transformers pretrained from scratch on synthetic tasks where the truth is
known. One module per family (``arith``, ``agent``); :mod:`forklens.organisms.base` holds what they
share. Organisms pretrain with the trainer, so this package sits above ``train/``."""
