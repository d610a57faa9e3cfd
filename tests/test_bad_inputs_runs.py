"""Bad output folders and resume inputs: each exits with status 2 and a specific message, prints no
traceback, and leaves every file that was there before unchanged (issue 21)."""

import json

import pytest

from forklens.cli import main
from forklens.runfolder import MARKER
from forklens.train.loop import Trainer, TrainConfig
from forklens.train.sources import SFTSource
from tests.conftest import make_tiny


def _marker(folder, kind, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"kind": kind, "foreign": [], "written": [], "finished": True, **extra}))


def _victim(root):
    (root / "victim").mkdir()
    (root / "victim" / "thesis.txt").write_text("four years of work")


def _sft_run(root, name="sft-run"):
    _marker(root / name, "train-sft", written=["metrics.jsonl"])
    (root / name / "metrics.jsonl").write_text('{"step": 1}\n')


def _tiny(root, name="tiny", **kw):
    model, tok = make_tiny("llama", **kw)
    model.save_pretrained(str(root / name))
    tok.save_pretrained(str(root / name))


def _corrupt_run(root):
    """A train-sft run whose every checkpoint is truncated."""
    _tiny(root)
    from forklens.policy import Policy

    policy = Policy.load(root / "tiny")
    src = SFTSource([("1+1=", "2;")] * 4, batch_size=2, seed=0)
    Trainer(policy, "sft", None, src, TrainConfig(max_steps=2, save_every=1), root / "broken", progress=False).train()
    for ck in (root / "broken" / "checkpoints").glob("step-*"):
        (ck / "trainer_state.pt").write_bytes(b"PK\x03\x04")
    _marker(root / "broken", "train-sft")


def _bigger_run(root):
    """A train-sft run of a wider model than ./tiny."""
    _tiny(root)
    model, tok = make_tiny("llama", hidden=64)
    src = SFTSource([("1+1=", "2;")] * 4, batch_size=2, seed=0)
    from forklens.policy import Policy

    Trainer(Policy(model, tok), "sft", None, src, TrainConfig(max_steps=1), root / "wide", progress=False).train()
    _marker(root / "wide", "train-sft")


SFT = ["train", "sft", "--model", "tiny", "--data", "data.jsonl"]
GRPO = ["train", "grpo", "--model", "tiny"]
# id: (setup, argv, message)
CASES = {
    "sft-out-dot": (None, SFT + ["--out", "."], "is the working directory or a folder above it"),
    "sft-out-dot-slash": (None, SFT + ["--out", "./"], "is the working directory or a folder above it"),
    "sft-out-parent": (None, SFT + ["--out", ".."], "is the working directory or a folder above it"),
    "sft-out-root": (None, SFT + ["--out", "/"], "is the working directory or a folder above it"),
    "sft-out-home": (None, SFT + ["--out", "~"], "is your home or the root folder"),
    "sft-out-empty": (None, SFT + ["--out", ""], "--out is empty"),
    "sft-out-is-file": (None, SFT + ["--out", "data.jsonl"], "is an existing file, not a folder"),
    "sft-out-below-file": (None, SFT + ["--out", "data.jsonl/run"], "which is a file, not a folder"),
    "sft-out-user-folder": (_victim, SFT + ["--out", "victim"], "is not empty and is not a forklens run of kind train-sft"),
    "sft-resume-user-folder": (_victim, SFT + ["--out", "victim", "--resume"], "nothing to resume there"),
    "sft-into-grpo-run": (lambda r: _marker(r / "g", "train-grpo"), SFT + ["--out", "g"],
                          "holds a forklens run of kind train-grpo, not train-sft"),
    "sft-resume-grpo-run": (lambda r: _marker(r / "g", "train-grpo"), SFT + ["--out", "g", "--resume"],
                            "holds a forklens run of kind train-grpo"),
    "sft-rerun-same-kind": (_sft_run, SFT + ["--out", "sft-run"], "pass --resume to continue it or --overwrite"),
    "sft-resume-and-overwrite": (_sft_run, SFT + ["--out", "sft-run", "--resume", "--overwrite"],
                                 "--resume and --overwrite contradict each other"),
    "sft-broken-marker": (lambda r: ((r / "m").mkdir(), (r / "m" / MARKER).write_text("{oops")),
                          SFT + ["--out", "m", "--overwrite"], "unreadable forklens marker"),
    "sft-marker-not-object": (lambda r: ((r / "m").mkdir(), (r / "m" / MARKER).write_text("[1, 2]")),
                              SFT + ["--out", "m"], "not a forklens marker"),
    "sft-overwrite-user-summary": (lambda r: ((r / "u").mkdir(), (r / "u" / "summary.json").write_text("{}")),
                                   SFT + ["--out", "u", "--overwrite"], "a run may write under the same name"),
    "sft-resume-corrupt-checkpoints": (_corrupt_run, SFT + ["--out", "broken", "--resume"],
                                       "no intact checkpoint"),
    "sft-resume-other-architecture": (_bigger_run, SFT + ["--out", "wide", "--resume"],
                                      "written for a different model"),
    "grpo-out-user-folder": (_victim, GRPO + ["--out", "victim"], "is not a forklens run of kind train-grpo"),
    "grpo-out-dot": (None, GRPO + ["--out", "."], "is the working directory"),
    "grpo-rerun-sft-run": (_sft_run, GRPO + ["--out", "sft-run"], "holds a forklens run of kind train-sft"),
    "fork-contrast-user-folder": (_victim, ["train", "fork-contrast", "--base", "tiny", "--task", "arith", "--out",
                                            "victim"], "is not a forklens run of kind train-fork-contrast"),
    "organism-out-user-folder": (_victim, ["organism", "build", "--out", "victim"], "is not a forklens run of kind organism"),
    "organism-out-dot": (None, ["organism", "build", "--out", "."], "is the working directory"),
    "organism-rebuild": (lambda r: (_marker(r / "org", "organism", written=["config.json"]),
                                    (r / "org" / "config.json").write_text("{}")),
                         ["organism", "build", "--out", "org"], "already holds a run of kind organism"),
    "demo-out-user-folder": (_victim, ["demo", "--quick", "--out", "victim"], "is not a forklens run of kind demo"),
    "demo-out-parent": (None, ["demo", "--quick", "--out", ".."], "is the working directory or a folder above it"),
    "diff-out-user-folder": (_victim, ["diff", "--base", "tiny", "--rl", "tiny", "--prompts", "prompts.jsonl",
                                       "--out", "victim"], "is not a forklens run of kind diff"),
    "probe-out-user-folder": (_victim, ["probe", "confidence", "--model", "tiny", "--task", "arith", "--out",
                                        "victim"], "is not a forklens run of kind probe-confidence"),
    "evaluate-out-exists": (None, ["evaluate", "--model", "tiny", "--out", "data.jsonl"],
                            "exists; pass --overwrite to replace it"),
    "evaluate-out-folder": (_victim, ["evaluate", "--model", "tiny", "--out", "victim"], "is a folder"),
    "experiment-levers-user-folder": (_victim, ["experiment", "levers", "--quick", "--out", "victim"],
                                      "is not a forklens run of kind experiment-levers"),
    "experiment-boundary-out-dot": (None, ["experiment", "boundary", "--out", "."], "is the working directory"),
    "experiment-rewards-into-demo": (lambda r: _marker(r / "d", "demo"), ["experiment", "rewards", "--out", "d"],
                                     "holds a forklens run of kind demo, not experiment-rewards"),
}


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_output_input(case, tmp_path, monkeypatch, capsys):
    setup, argv, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(work)
    (work / "data.jsonl").write_text(json.dumps({"prompt": "1+1=", "response": "2;"}) + "\n")
    (work / "prompts.jsonl").write_text(json.dumps({"prompt": "1+1="}) + "\n")
    if setup is not None:
        setup(work)
    if not (work / "tiny").exists():
        (work / "tiny").mkdir()  # never loaded: the folder check comes first
    before = _snapshot(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err
    after = _snapshot(tmp_path)
    lost = [str(p) for p in before if p not in after or (after[p] != before[p] and p.name != MARKER)]
    assert not lost, f"changed or lost: {lost}"
    for p in before:  # the run folder's marker may record what a failed run wrote, never a new owner
        if p.name == MARKER and before[p].startswith(b"{\""):
            assert json.loads(after[p])["kind"] == json.loads(before[p])["kind"]


def test_case_count():
    assert len(CASES) >= 25
