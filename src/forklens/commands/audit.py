"""``forklens audit``: check a training environment and its configs for known silent bugs."""

from __future__ import annotations

import argparse
import json
import sys

from forklens.audit import AuditReport, load_inputs, run_audit

_SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}

DESCRIPTION = """\
Check the installed packages (or a `pip freeze` file from the training machine) and the DeepSpeed
and trainer configs for known silent training-stack bugs: DeepSpeed ZeRO-1/2 CPU-offload dropping
micro-batch gradients, the transformers gradient-accumulation loss bug, TRL's dapo/cispo/vespo
normaliser when steps_per_generation differs from gradient_accumulation_steps, OpenRLHF's
mean-of-micro-batch-means loss, and verl's legacy FSDP actor averaging per-micro-batch token
means. Exit status: 0 when nothing of severity medium or above is found, 1 when something is, 2 on
bad input. See docs/audit.md."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="Check a training environment and configs for known silent training-stack bugs.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--requirements",
        metavar="FREEZE.txt",
        help="`pip freeze` output of the training environment (default: this interpreter's packages)",
    )
    parser.add_argument(
        "--deepspeed-config",
        metavar="FILE",
        help='DeepSpeed JSON config ("auto" values are resolved from --trainer-args)',
    )
    parser.add_argument(
        "--trainer-args",
        metavar="FILE",
        help="YAML or JSON file of trainer arguments (gradient_accumulation_steps, loss_type, deepspeed, ...)",
    )
    parser.add_argument(
        "--verl-config",
        metavar="FILE",
        help="verl Hydra config (YAML), or the launch script / command line whose a.b.c=value overrides are read",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    env, setup = load_inputs(
        requirements=args.requirements,
        deepspeed_config=args.deepspeed_config,
        trainer_args=args.trainer_args,
        verl_config=args.verl_config,
    )
    report = run_audit(env, setup)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(report)
    return 1 if report.blocking else 0


def render(report: AuditReport, file=None) -> None:
    """Readable tables of the findings and of what was checked."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file or sys.stdout, highlight=False, soft_wrap=False)
    checked = report.checked()

    packages = Table(title="Packages", box=box.SIMPLE, title_justify="left")
    packages.add_column("package")
    packages.add_column("version")
    packages.add_column("source")
    for name, info in checked["packages"].items():
        if info is None:
            packages.add_row(name, Text("not present", style="dim"), "")
        else:
            version = Text(info["version"]) if info["version"] else Text("unknown", style="yellow")
            packages.add_row(name, version, Text(info["source"]))
    console.print(Text(f"Package list: {checked['packages_source']}"))
    console.print(packages)

    rules = Table(title="Rules", box=box.SIMPLE, title_justify="left")
    rules.add_column("rule")
    rules.add_column("status")
    rules.add_column("why")
    for result in report.results:
        style = {"flagged": "bold", "clear": "green", "not applicable": "dim"}[result.status]
        rules.add_row(result.rule_id, Text(result.status, style=style), Text(result.reason))
    console.print(rules)

    if not report.findings:
        console.print(Text("No findings.", style="green"))
    for finding in report.findings:
        table = Table(
            box=box.ROUNDED,
            show_header=False,
            title=Text.assemble(
                (f"[{finding.severity.upper()}] ", _SEVERITY_STYLE[finding.severity]),
                (f"{finding.id}: ", "bold"),
                (finding.title, ""),
            ),
            title_justify="left",
            expand=True,
        )
        table.add_column("field", style="bold", no_wrap=True)
        table.add_column("detail", overflow="fold")
        table.add_row("evidence", Text("\n".join(f"- {line}" for line in finding.evidence)))
        table.add_row("consequence", Text(finding.consequence))
        table.add_row("fix", Text(finding.fix))
        table.add_row("references", Text("\n".join(finding.references)))
        console.print(table)

    for note in checked["notes"]:
        console.print(Text(f"note: {note}", style="dim"))
    counts = {}
    for finding in report.findings:
        counts[finding.severity] = counts.get(finding.severity, 0) + 1
    summary = ", ".join(f"{n} {sev}" for sev, n in counts.items()) or "none"
    verdict = "exit 1 (a finding of severity medium or above)" if report.blocking else "exit 0"
    console.print(f"Findings: {summary}; {verdict}")
