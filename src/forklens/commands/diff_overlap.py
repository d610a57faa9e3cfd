"""``forklens diff-overlap A B``: do two diffs move the same tokens? (e.g. a skill file vs RL)"""

from __future__ import annotations

from forklens.analysis.diff_overlap import compare_diffs, load_token_rows, write_overlap
from forklens.commands._common import add_overwrite_arg, console
from forklens.runfolder import check_out_file

DESCRIPTION = """\
Compare the tokens two `forklens diff` runs move (tuned argmax != base argmax), on the tokens both
scored. Typical: A = `forklens diff --base M --rl-skill SKILL.md --out A` and
B = `forklens diff --base M --rl RL --responses A/responses.jsonl --out B`: does the skill file move
the tokens RL moves? Reports recall (of B's moves, how many A makes), precision, Jaccard, lift over
chance, agreement on the chosen token, and the rank correlation of KL, with bootstrap intervals over
prompts. See docs/diff.md."""


def register(sub) -> None:
    p = sub.add_parser("diff-overlap", help="Do two diffs move the same tokens? (skill file vs RL, ...)",
                       description=DESCRIPTION)
    p.add_argument("a", metavar="DIFF_A", help="output folder of the first `forklens diff` (tokens.jsonl/.parquet)")
    p.add_argument("b", metavar="DIFF_B", help="output folder of the second diff, scored on the same responses")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the summary as JSON")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.out:
        check_out_file(args.out, overwrite=args.overwrite)
    summary = compare_diffs(load_token_rows(args.a), load_token_rows(args.b), names=(args.a, args.b), seed=args.seed)
    table = Table(title=f"tokens moved: A = {args.a}, B = {args.b} ({summary['n_tokens']} shared tokens, "
                        f"{summary['n_prompts']} prompts)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    table.add_row("moved in A / in B / in both", f"{summary['moved_a']} / {summary['moved_b']} / {summary['moved_both']}", "")
    for key, label in [("recall_of_b", "recall (of B's moves, A makes)"), ("precision_of_b", "precision"),
                       ("jaccard", "Jaccard"), ("lift", "lift over chance (1 = independent)"),
                       ("same_token", "same token where both move")]:
        iv = summary[key]
        table.add_row(label, f"{iv['mean']:.3f}", f"[{iv['low']:.3f}, {iv['high']:.3f}]")
    rho = summary["kl_spearman"]
    table.add_row("Spearman of KL(base || tuned)", "—" if rho is None else f"{rho:.3f}", "")
    Console().print(table)
    if args.out:
        console.print(f"wrote {write_overlap(summary, args.out)}")
    return 0
