"""Organism cache keys: trainer settings at values that change nothing in pretraining stay out of them."""

from dataclasses import replace

from forklens.organisms.arith import OrganismConfig, organism_key


def test_neutral_trainer_settings_do_not_change_the_key(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    cfg = OrganismConfig()
    assert organism_key(cfg) == "0b8aa65290a1cf95"  # the key before these settings existed (a4f8262)
    changed = replace(cfg, pretrain=replace(cfg.pretrain, num_iterations=2))
    assert organism_key(changed) != organism_key(cfg)
    assert organism_key(replace(cfg, pretrain=replace(cfg.pretrain, mixed_precision="bf16"))) != organism_key(cfg)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # auto now means bf16: another organism
    assert organism_key(cfg) != "0b8aa65290a1cf95"
