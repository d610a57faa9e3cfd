"""One CLI table dispatches the experiments; every --quick is a packaged YAML; experiments hold no CLI code."""

import importlib

import pytest

from forklens.cli import main
from forklens.commands.experiment import EXPERIMENTS
from forklens.config import load_config, packaged_config


def test_experiment_modules_register_no_cli():
    for mod in ("boundary", "fork_vs_rl", "levers", "rewards", "sft_then_rl", "sft_bugs", "demo", "fpo", "pretraining",
                "search", "negation", "delegation", "skills", "explore", "fork_contrast_zoo", "sft_then_rl_zoo"):
        m = importlib.import_module(f"forklens.experiments.{mod}")
        assert not hasattr(m, "register_cli") and not hasattr(m, "quick_config")


def test_quick_recipes_are_yaml_with_the_quick_settings():
    quick = {name: load_config(e.config, packaged_config(e.quick)) for name, e in EXPERIMENTS.items() if e.quick}
    assert set(quick) == {"fork-vs-rl", "boundary", "rewards", "levers", "sft-then-rl", "forks", "fpo", "pretraining",
                          "negation", "teams", "rubrics", "delegation", "skills", "explore", "fork-contrast-zoo",
                          "sft-then-rl-zoo", "levers-zoo"}
    fz = quick["fork-contrast-zoo"]
    assert (fz.run.seeds, fz.run.seed, fz.run.rl.train.max_steps, fz.run.fork.train.max_steps, fz.run.val_problems) == (
        1, 100, 3, 3, 32)
    tm = quick["teams"]
    assert (tm.seeds, tm.rl.steps, tm.eval_samples, tm.organism.pretrain.max_steps) == (1, 2, 3, 40)
    dl = quick["delegation"]
    assert (dl.seeds, dl.rl.train.max_steps, dl.organism.pretrain.max_steps, dl.organism.task.window) == (1, 2, 60, 4)
    sk = quick["skills"]
    assert (sk.seeds, sk.opt.steps, sk.rl.train.max_steps, sk.organism.pretrain.max_steps) == (1, 3, 2, 40)
    ex = quick["explore"]
    assert (ex.seeds, ex.rl.train.max_steps, ex.rl.sampling.group_size, ex.coverage_every, ex.eval_problems) == (1, 6, 4, 3, 8)
    fp = quick["fpo"]
    assert (fp.seeds, fp.rl.train.max_steps, fp.organism.pretrain.max_steps, fp.arms) == (
        1, 6, 60, ["baseline", "relaxed", "baseline-fixed"])
    pt = quick["pretraining"]
    assert (pt.seeds, pt.hidden_size, pt.flops_budget, pt.rl.train.max_steps, pt.eval_problems) == (1, 32, 1e10, 2, 16)
    ng = quick["negation"]
    assert (ng.seeds, ng.n_claims, ng.ft.max_steps, ng.organism.pretrain.max_steps) == (1, 2, 4, 40)
    rb = quick["rubrics"]
    assert (rb.seeds, rb.rl.train.max_steps, rb.organism.pretrain.max_steps, rb.rm_pairs) == (1, 4, 40, 64)
    fk = quick["forks"]
    assert (fk.seeds, fk.rl.train.max_steps, fk.variants) == (1, 3, ["arith/planted", "addv/undertrained",
                                                                    "negctl/notation"])
    b = quick["boundary"]
    assert (b.arith_rl.train.max_steps, b.agent_rl.train.max_steps, b.passk.n, b.passk.T) == (20, 30, 16, [0, 1, 3, 5])
    lv = quick["levers"]
    assert (lv.seeds, lv.arith_rl.train.max_steps, lv.agent_rl.sampling.prompts_per_step, lv.levers.explore.task_steps,
            lv.eval_agent_problems) == (1, 4, 4, 1, 16)
    lz = quick["levers-zoo"]
    assert (lz.seeds, lz.rl.train.max_steps, lz.rl.sampling.group_size, lz.curve_every, lz.eval_problems) == (1, 4, 4, 2, 4)
    rw = quick["rewards"]
    assert (rw.seeds, rw.rl.train.max_steps, rw.rl.sampling.group_size, rw.confidence_m, rw.eval_samples) == (1, 3, 4, 2, 2)
    st = quick["sft-then-rl"]
    assert (st.seeds, st.rl.train.max_steps, st.n_validation, st.eval_every, st.methods) == (
        10, 30, 256, 2, ["sft-then-rl", "luffy", "relift"])
    for name, e in EXPERIMENTS.items():  # the quick recipe differs from the full one
        if e.quick:
            assert quick[name] != (load_config(e.config, packaged_config(e.recipe)) if e.recipe else e.config())


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_prints_its_config(name, capsys):
    args = ["experiment", name, "--print-config"] + (["--quick"] if EXPERIMENTS[name].quick else [])
    assert main(args) == 0
    assert "seed" in capsys.readouterr().out


@pytest.mark.parametrize("module, runner, field, value, match", [
    ("teams", "run_teams", "arms", ["single/sum", "solo"], r"unknown arms \['solo'\]"),
    ("delegation", "run_delegation", "arms", ["rao-mean", "rao-max"], r"unknown arms \['rao-max'\]"),
    ("delegation", "run_delegation", "arms", ["flat"], "must include rao-mean"),
    ("negation", "run_negation", "conditions", ["positive", "sarcastic"], r"unknown conditions \['sarcastic'\]"),
])
def test_bad_arms_fail_before_the_run_folder_is_claimed(tmp_path, module, runner, field, value, match):
    """Every arms x seeds experiment checks its arms (or conditions) up front (experiments.arm_runs.begin)."""
    from dataclasses import replace

    from forklens.errors import ConfigError

    m = importlib.import_module(f"forklens.experiments.{module}")
    cfg_cls = EXPERIMENTS[module].config
    cfg = replace(cfg_cls(), **{field: value})
    with pytest.raises(ConfigError, match=match):
        getattr(m, runner)(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
