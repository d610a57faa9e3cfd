"""`forklens experiment fork-contrast-zoo`: fork-vs-rl (GRPO vs RL-free fork-contrast, compute-matched,
stopped on validation) on organism-zoo variants, one artifact for all of them (issue 15 item 5).

For each ``family/variant`` of ``variants`` the whole :func:`forklens.experiments.fork_vs_rl.fork_vs_rl_runs`
protocol runs from that variant's cached base (``run`` holds its settings; ``run.variant`` is set per
variant): validation problems held out of the training split (and checked disjoint from the test
split), GRPO and fork-contrast per seed with the same plateau rule, fork-contrast's learning rate
searched on the first seed and counted, test accuracy of the best-validation weights (``run.keep_best``).

The default pair: ``addv/undertrained-mid`` (the precondition: a gold-trained base whose mistakes are
its own, with GRPO's changes inside the base top-5 at high-entropy positions, results/forks-oracle) and
``negctl/notation-strict`` (the control: the verifier rewards only answers written in letters, which the
base never emits, so fork-contrast, which reweights the base's own sampled branches, has nothing to
contrast). ``summary.variants[KEY]`` is each variant's fork-vs-rl summary (``gains``, ``comparison``,
``comparison_base``, ``curves``, ...); ``accuracy_vs_flops.png``: one panel per variant.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.evaluate import EvalConfig
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.compute_matched import draw_curves
from forklens.experiments.fork_vs_rl import ForkVsRLConfig, fork_vs_rl_runs, organism_fork_recipe
from forklens.organisms import get_family
from forklens.report.artifacts import make_stamp, plots_dir, write_artifact
from forklens.runfolder import claim_folder
from forklens.train.loop import read_metrics
from forklens.train.run import RLConfig

console = Console(stderr=True)

DEFAULT_VARIANTS = ["addv/undertrained-mid", "negctl/notation-strict"]


def zoo_run_default() -> ForkVsRLConfig:
    """The measured recipe (= configs/fork-contrast-zoo.yaml): GRPO at the demo's recipe (16 prompts x 8,
    lr 1e-4) with a 20-step cap, fork-contrast at the organism recipe with a 20-step cap and its learning
    rate searched over 3 values; 100 validation and 100 test problems; the best-validation weights reported;
    the base + 3 points target."""
    run = ForkVsRLConfig(methods=["grpo", "fork-contrast"], intervene=False, seeds=5, val_problems=100,
                         keep_best=True, base_margin=0.03, eval=EvalConfig(limit=100),
                         fork_lr_grid=[1e-4, 3e-4, 1e-3])
    run.rl = RLConfig()
    run.rl.train = replace(run.rl.train, max_steps=20, save_every=0)
    run.fork = organism_fork_recipe()
    run.fork.train = replace(run.fork.train, max_steps=20)
    return run


@dataclass
class ForkContrastZooConfig:
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS),
                                help="family/variant pairs of the organism zoo, in order.")
    run: ForkVsRLConfig = field(default_factory=zoo_run_default, help="fork-vs-rl settings for every variant "
                                "(run.variant is set per variant).")
    family_overrides: list[str] = field(default_factory=list, help="FAMILY:KEY=VALUE overrides of a family's config, "
                                        "applied after each variant's own (e.g. tiny models in a test).")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/fork-contrast-zoo).")


def variant_runs(cfg: ForkContrastZooConfig) -> list[ForkVsRLConfig]:
    """One fork-vs-rl config per variant (bad names and overrides fail here, before anything runs)."""
    out = []
    for spec in cfg.variants:
        if spec.count("/") != 1:
            raise ConfigError(f"variants: {spec!r} is not FAMILY/VARIANT")
        fname, vname = spec.split("/")
        overrides = []
        for item in cfg.family_overrides:
            if ":" not in item or "=" not in item:
                raise ConfigError(f"family_overrides: {item!r} is not FAMILY:KEY=VALUE")
            target, assignment = item.split(":", 1)
            if target == fname:
                overrides.append(assignment)
        get_family(fname).variant_config(vname, overrides=overrides)
        out.append(replace(cfg.run, variant=spec, variant_overrides=overrides, artifact=""))
    return out


def run_fork_contrast_zoo(cfg: ForkContrastZooConfig, out: str | Path, use_cache: bool = True,
                          progress: bool = True) -> dict:
    out = Path(out)
    claim_folder(out, "experiment-fork-contrast-zoo")
    t_start = time.perf_counter()
    runs = variant_runs(cfg)
    seeds = [cfg.run.seed + i for i in range(cfg.run.seeds)]
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    summary: dict = {"variants": {}, "seeds": seeds, "config": asdict(cfg)}
    metrics: dict[str, Path] = {}
    panels: list[tuple[dict, str, dict]] = []
    for rcfg in runs:
        console.rule(f"[bold]{rcfg.variant}")
        res = fork_vs_rl_runs(rcfg, out / rcfg.variant.replace("/", "-"), use_cache, progress)
        tag = rcfg.variant.replace("/", "-")
        metrics.update({f"{tag}_{k}": p for k, p in res["metrics"].items()})
        summary["variants"][rcfg.variant] = {k: v for k, v in res["summary"].items() if k not in ("config", "plot")}
        panels.append((res["summary"]["curves"], rcfg.variant, res["hlines"]))
        summary["variants_done"] = len(summary["variants"])
        summary["total_wall_s"] = time.perf_counter() - t_start
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["plot"] = plot_panels(panels, out / "accuracy_vs_flops", len(seeds))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.artifact:
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name,
                                {**summary, "plot": ["plots/accuracy_vs_flops.png"]}, seeds=seeds, stamp=stamp,
                                metrics={k: read_metrics(p) for k, p in metrics.items() if p.is_file()})
        plot_panels(panels, plots_dir(folder) / "accuracy_vs_flops", len(seeds), formats=("png",))
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def plot_panels(panels: list[tuple[dict, str, dict]], stem: Path, n_seeds: int,
                formats: tuple[str, ...] = ("png", "svg")) -> list[str]:
    """Validation accuracy vs FLOPs, one panel per variant (a thin line per seed, the mean bold)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from forklens.report.plots import save_figure

    fig = Figure(figsize=(7.0 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (curves, variant, hlines) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.grid(True, which="major", alpha=0.3)
        draw_curves(ax, curves, f"{variant}: validation accuracy vs FLOPs ({n_seeds} seeds)", hlines)
    return [str(p) for p in save_figure(fig, stem, formats=formats)]


def print_summary(s: dict, out) -> None:
    from rich.table import Table

    t = Table(title=f"fork-contrast-zoo over seeds {s['seeds']}: gain over the base, mean [95% CI]")
    for col in ("variant", "method", "base test", "test gain", "best validation gain", "FLOPs at stop"):
        t.add_column(col, justify="left" if col in ("variant", "method") else "right")

    def iv(x):
        return "—" if x is None else f"{100 * x['mean']:+.1f} [{100 * x['low']:+.1f}, {100 * x['high']:+.1f}]"

    for key, v in s["variants"].items():
        for m, g in v["gains"].items():
            if m in v["methods"]:
                t.add_row(key, m, f"{100 * v['base']['accuracy']:.1f}%", iv(g["test"]), iv(g["val"]),
                          f"{v['methods'][m]['flops']:.3g}")
    Console().print(t)
    console.print(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'accuracy_vs_flops.png'}", highlight=False)
