"""Bad input to every command ends in exit status 2 with a specific one-line message, no traceback,
and nothing on disk lost: each case runs ``forklens.cli.main`` in-process in a folder holding a
user's file and the inputs, and checks afterwards that every file there is unchanged.

Cases that need a model use one tiny model saved once per session; they must fail before any
training or sampling starts (a config value or a data file is checked when it is read)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forklens.cli import main
from forklens.errors import ForklensWarning

GOOD_SFT = json.dumps({"prompt": "1+1=", "response": "2"})
GOOD_PROMPT = json.dumps({"prompt": "1+1=", "answer": "2"})


@dataclass
class Case:
    id: str
    argv: str  # split on spaces; {model} is the tiny model, {trunc}/{garbage}/{noconfig}/{badjson} broken ones
    message: str  # a substring the error line must contain
    files: dict[str, str | bytes] = field(default_factory=dict)


def sft(*sets: str, data: str = "data.jsonl") -> str:
    return f"train sft --model {{model}} --data {data} --out out " + " ".join(f"--set {s}" for s in sets)


def grpo(*sets: str) -> str:
    return "train grpo --model {model} --out out " + " ".join(f"--set {s}" for s in sets)


def fork(*sets: str, data: str = "data.jsonl") -> str:
    return f"train fork-contrast --base {{model}} --data {data} --out out " + " ".join(f"--set {s}" for s in sets)


def diff(prompts: str = "prompts.jsonl", extra: str = "") -> str:
    return f"diff --base {{model}} --rl {{model}} --prompts {prompts} --out out {extra}".strip()


def intervene(extra: str, prompts: str = "prompts.jsonl") -> str:
    return f"intervene --base {{model}} --rl {{model}} --prompts {prompts} --out out {extra}".strip()


SFT_FILE = {"data.jsonl": GOOD_SFT + "\n"}
PROMPTS = {"prompts.jsonl": GOOD_PROMPT + "\n"}
LONG_AT_25 = "\n".join([GOOD_SFT] * 24 + [json.dumps({"prompt": "1" * 300, "response": "2"})] + [GOOD_SFT] * 5)

CASES = [
    # --- demo: every key of the resolved config is checked before anything runs -----------------------
    Case("demo-max-steps-0", "demo --out out --set rl.train.max_steps=0", "rl.train.max_steps=0 is out of range; expected >= 1"),
    Case("demo-group-size-0", "demo --out out --set rl.sampling.group_size=0", "rl.sampling.group_size=0"),
    Case("demo-epsilon-negative", "demo --out out --set rl.loss.epsilon=-1", "rl.loss.epsilon=-1.0 is out of range; expected >= 0"),
    Case("demo-eval-n-0", "demo --out out --set eval.n=0", "eval.n=0 is out of range"),
    Case("demo-config-missing", "demo --out out --config nope.yaml", "config file nope.yaml does not exist"),
    Case("demo-config-bad-yaml", "demo --out out --config c.yaml", "c.yaml line 3: not valid YAML", {"c.yaml": "seed: 1\nrl: [\n"}),
    Case("demo-config-not-mapping", "demo --out out --config c.yaml", "expected a mapping", {"c.yaml": "- 1\n- 2\n"}),
    Case("demo-config-range-names-file", "demo --out out --config c.yaml",
         "c.yaml: rl.train.max_steps=-1 is out of range", {"c.yaml": "rl:\n  train:\n    max_steps: -1\n"}),
    Case("demo-agg-mode-bogus", "demo --out out --set rl.loss.loss_agg_mode=mean", "'mean' is not one of"),
    Case("demo-lr-negative", "demo --out out --set rl.train.learning_rate=-0.1", "rl.train.learning_rate=-0.1 is out of range; expected > 0"),
    Case("demo-diff-prompts-0", "demo --out out --set diff_prompts=0", "diff_prompts=0"),
    Case("demo-unknown-key", "demo --out out --set rl.train.max_step=3", "unknown key 'max_step'; did you mean 'max_steps'"),
    Case("demo-top-p-above-1", "demo --out out --set rl.sampling.top_p=1.5", "rl.sampling.top_p=1.5 is out of range; expected <= 1"),
    Case("demo-max-new-tokens-0", "demo --out out --set rl.sampling.max_new_tokens=0", "rl.sampling.max_new_tokens=0"),
    Case("demo-schedule-bogus", "demo --out out --set rl.train.lr_schedule=bogus", "'bogus' is not one of"),
    Case("demo-not-a-number", "demo --out out --set rl.train.max_steps=many", "expected int, got 'many'"),
    Case("demo-override-without-value", "demo --out out --set rl.train.max_steps", "expected KEY=VALUE"),
    Case("demo-nan-lr", "demo --out out --set rl.train.learning_rate=nan", "rl.train.learning_rate=nan is out of range"),
    # --- organism build ----------------------------------------------------------------------------------
    Case("organism-batch-0", "organism build --out out --set batch_size=0", "batch_size=0 is out of range"),
    Case("organism-hidden-0", "organism build --out out --set model.hidden_size=0", "model.hidden_size=0"),
    Case("organism-digits-0", "organism build --out out --set arith.digits=0", "arith.digits=0"),
    Case("organism-p-slip", "organism build --out out --set arith.p_slip=1.5", "arith.p_slip=1.5 is out of range; expected <= 1"),
    Case("organism-steps-negative", "organism build --out out --set pretrain.max_steps=-1", "pretrain.max_steps=-1"),
    Case("organism-test-fraction-1", "organism build --out out --set arith.test_fraction=1", "arith.test_fraction=1.0"),
    # --- train grpo --------------------------------------------------------------------------------------
    Case("grpo-model-missing", "train grpo --model nowhere --out out", "model directory nowhere does not exist"),
    Case("grpo-model-is-file", "train grpo --model data.jsonl --out out", "data.jsonl is a file", SFT_FILE),
    Case("grpo-model-no-config", "train grpo --model {noconfig} --out out", "has no config.json"),
    Case("grpo-model-config-bad-json", "train grpo --model {badjson} --out out", "config.json line 1: not valid JSON"),
    Case("grpo-weights-truncated", "train grpo --model {trunc} --out out", "could not load the model weights"),
    Case("grpo-weights-garbage", "train grpo --model {garbage} --out out", "could not load the model weights"),
    Case("grpo-prompts-per-step-0", grpo("sampling.prompts_per_step=0"), "sampling.prompts_per_step=0"),
    Case("grpo-micro-batch-0", grpo("train.micro_batch_size=0"), "train.micro_batch_size=0"),
    Case("grpo-epsilon-negative", grpo("loss.epsilon=-1"), "loss.epsilon=-1.0 is out of range; expected >= 0"),
    Case("grpo-epsilon-1", grpo("loss.epsilon=1"), "loss.epsilon=1.0 is out of range; expected < 1"),
    Case("grpo-max-steps-0", grpo("train.max_steps=0"), "train.max_steps=0 is out of range"),
    Case("grpo-max-steps-negative", grpo("train.max_steps=-1"), "train.max_steps=-1 is out of range"),
    Case("grpo-max-new-tokens-negative", grpo("sampling.max_new_tokens=-3"), "sampling.max_new_tokens=-3"),
    Case("grpo-temperature-negative", grpo("sampling.temperature=-1"), "sampling.temperature=-1.0"),
    Case("grpo-beta-negative", grpo("loss.beta=-0.1"), "loss.beta=-0.1"),
    Case("grpo-entropy-quantile-0", grpo("loss.top_entropy_quantile=0"), "loss.top_entropy_quantile=0.0"),
    Case("grpo-epsilon-high-negative", grpo("loss.epsilon_high=-0.1"), "loss.epsilon_high=-0.1"),
    Case("grpo-task-unknown", "train grpo --model {model} --out out --task bogus", "bogus"),
    Case("grpo-scale-rewards-bogus", grpo("sampling.scale_rewards=std"), "'std' is not one of"),
    Case("grpo-bool-bogus", grpo("loss.mask_truncated_completions=maybe"), "expected true or false"),
    # --- train sft: the data file is checked when read, with its line --------------------------------------
    Case("sft-data-missing", sft(data="none.jsonl"), "data file none.jsonl does not exist"),
    Case("sft-data-is-dir", sft(data="sub"), "is a directory", {"sub/keep.txt": "x"}),
    Case("sft-data-empty", sft(), "is empty", {"data.jsonl": "\n\n"}),
    Case("sft-bad-json-line-3", sft(), "data.jsonl line 3: not valid JSON", {"data.jsonl": f"{GOOD_SFT}\n{GOOD_SFT}\n{{oops\n"}),
    Case("sft-missing-response", sft(), "line 1: missing the required \"response\" field", {"data.jsonl": GOOD_PROMPT + "\n"}),
    Case("sft-response-not-string", sft(), "line 1: \"response\" must be a string, got int",
         {"data.jsonl": json.dumps({"prompt": "1+1=", "response": 2}) + "\n"}),
    Case("sft-not-utf8", sft(), "not UTF-8", {"data.jsonl": '{"prompt": "\xe9", "response": "2"}\n'.encode("latin-1")}),
    Case("sft-line-not-object", sft(), "line 2: expected a JSON object, got list", {"data.jsonl": f"{GOOD_SFT}\n[1, 2]\n"}),
    Case("sft-overlong-line-25", sft("train.max_steps=5", "batch_size=2"),
         "data.jsonl line 25: the example is 302 tokens, longer than the context", {"data.jsonl": LONG_AT_25}),
    Case("sft-batch-size-0", sft("batch_size=0"), "batch_size=0 is out of range", SFT_FILE),
    Case("sft-order-bogus", sft("order=bogus"), "'bogus' is not one of 'shuffle', 'reverse_perplexity', 'perplexity'", SFT_FILE),
    Case("sft-lr-negative", sft("train.learning_rate=-1"), "train.learning_rate=-1.0", SFT_FILE),
    Case("sft-max-steps-0", sft("train.max_steps=0"), "train.max_steps=0", SFT_FILE),
    Case("sft-micro-batch-0", sft("train.micro_batch_size=0"), "train.micro_batch_size=0", SFT_FILE),
    Case("sft-warmup-negative", sft("train.warmup_steps=-1"), "train.warmup_steps=-1", SFT_FILE),
    Case("sft-beta1-1", sft("train.adam_beta1=1"), "train.adam_beta1=1.0 is out of range; expected < 1", SFT_FILE),
    Case("sft-log-every-0", sft("train.log_every=0"), "train.log_every=0", SFT_FILE),
    # --- train fork-contrast -------------------------------------------------------------------------------
    Case("fork-missing-answer", fork(), "line 1: missing \"answer\"", {"data.jsonl": json.dumps({"prompt": "1+1="}) + "\n"}),
    Case("fork-bad-json", fork(), "data.jsonl line 1: not valid JSON", {"data.jsonl": "{\"prompt\": \n"}),
    Case("fork-duplicate-id", fork(), "id 'a' was already used on line 1",
         {"data.jsonl": json.dumps({"id": "a", "prompt": "1", "answer": 1}) + "\n"
          + json.dumps({"id": "a", "prompt": "2", "answer": 2}) + "\n"}),
    Case("fork-rollouts-1", fork("data.rollouts_per_problem=1"), "data.rollouts_per_problem=1 is out of range; expected >= 2", PROMPTS),
    Case("fork-max-new-tokens-0", fork("data.max_new_tokens=0"), "data.max_new_tokens=0", PROMPTS),
    Case("fork-kl-negative", fork("loss.kl_coef=-1"), "loss.kl_coef=-1.0", PROMPTS),
    Case("fork-lora-rank-0", fork("lora.r=0"), "lora.r=0", PROMPTS),
    Case("fork-drop-all", fork("data.drop_longest_frac=1"), "data.drop_longest_frac=1.0 is out of range; expected < 1", PROMPTS),
    Case("fork-gate-bogus", fork("data.gate=oracle"), "'oracle' is not one of", PROMPTS),
    # --- evaluate --------------------------------------------------------------------------------------------
    Case("evaluate-n-0", "evaluate --model {model} --set n=0", "n=0 is out of range; expected >= 1"),
    Case("evaluate-max-new-tokens-negative", "evaluate --model {model} --set max_new_tokens=-3", "max_new_tokens=-3"),
    Case("evaluate-max-new-tokens-0", "evaluate --model {model} --set max_new_tokens=0", "max_new_tokens=0"),
    Case("evaluate-top-p-0", "evaluate --model {model} --set top_p=0", "top_p=0.0 is out of range; expected > 0"),
    Case("evaluate-limit-negative", "evaluate --model {model} --set limit=-1", "limit=-1"),
    Case("evaluate-task-unknown", "evaluate --model {model} --task nope", "nope"),
    Case("evaluate-split-bogus", "evaluate --model {model} --set split=dev", "'dev' is not one of 'train', 'test'"),
    Case("evaluate-out-is-dir", "evaluate --model {model} --out sub --set limit=1", "--out 'sub' is a folder",
         {"sub/keep.txt": "x"}),
    Case("evaluate-model-missing", "evaluate --model missing-dir", "model directory missing-dir does not exist"),
    # --- diff --------------------------------------------------------------------------------------------------
    Case("diff-prompts-missing", diff("none.jsonl"), "prompts file none.jsonl does not exist"),
    Case("diff-prompts-empty", diff(), "is empty", {"prompts.jsonl": ""}),
    Case("diff-prompt-not-string", diff(), "line 1: \"prompt\" must be a string, got int",
         {"prompts.jsonl": json.dumps({"prompt": 3}) + "\n"}),
    Case("diff-answer-not-scalar", diff(), "line 1: \"answer\" must be a string or a number",
         {"prompts.jsonl": json.dumps({"prompt": "1+1=", "answer": [2]}) + "\n"}),
    Case("diff-responses-unknown-id", diff(extra="--responses r.jsonl"), "r.jsonl line 1: id 'zz' is not in the prompts file",
         {**PROMPTS, "r.jsonl": json.dumps({"id": "zz", "response": "2"}) + "\n"}),
    Case("diff-responses-finished-bogus", diff(extra="--responses r.jsonl"), "\"finished\" must be true or false",
         {**PROMPTS, "r.jsonl": json.dumps({"id": "L1", "response": "2", "finished": "yes"}) + "\n"}),
    Case("diff-temperature-negative", diff(extra="--temperature -1"), "argument --temperature: must be >= 0", PROMPTS),
    Case("diff-n-0", diff(extra="--n 0"), "--n must be >= 1, got 0", PROMPTS),
    Case("diff-top-k-0", diff(extra="--top-k 0"), "--top-k must be >= 1, got 0", PROMPTS),
    Case("diff-dtype-bogus", diff(extra="--dtype float33"), "unknown dtype 'float33'", PROMPTS),
    Case("diff-rl-missing", "diff --base {model} --rl nowhere --prompts prompts.jsonl --out out",
         "model directory nowhere does not exist", PROMPTS),
    # --- intervene ------------------------------------------------------------------------------------------------
    Case("intervene-no-answer", intervene(""), "every prompt needs an \"answer\"",
         {"prompts.jsonl": json.dumps({"prompt": "1+1="}) + "\n"}),
    Case("intervene-seeds-0", intervene("--seeds 0"), "--seeds must be >= 1", PROMPTS),
    Case("intervene-temperature-negative", intervene("--temperature -1"), "argument --temperature: must be >= 0, got -1",
         PROMPTS),
    Case("intervene-max-new-tokens-0", intervene("--max-new-tokens 0"), "--max-new-tokens must be >= 1", PROMPTS),
    Case("intervene-batch-size-0", intervene("--batch-size 0"), "argument --batch-size: must be >= 1, got 0", PROMPTS),
    Case("intervene-limit-negative", intervene("--limit -1"), "argument --limit: must be >= 0, got -1", PROMPTS),
    Case("intervene-gate-bogus", intervene("--gate sometimes"), "sometimes", PROMPTS),
    # --- passk --------------------------------------------------------------------------------------------------
    Case("passk-samples-missing", "passk --samples none.jsonl --out out", "none.jsonl"),
    Case("passk-samples-bad-json", "passk --samples s.jsonl --out out", "s.jsonl:2", {"s.jsonl": '{"problem_id": "a", "correct": true}\n{x\n'}),
    Case("passk-missing-correct", "passk --samples s.jsonl --out out", "correct", {"s.jsonl": '{"problem_id": "a"}\n'}),
    Case("passk-k-above-n", "passk --samples s.jsonl --out out --k 4", "k=4",
         {"s.jsonl": '{"problem_id": "a", "correct": true}\n{"problem_id": "a", "correct": false}\n'}),
    Case("passk-generate-batch-0", "passk --model {model} --task arith --batch-size 0 --out out",
         "argument --batch-size: must be >= 1, got 0"),
    Case("passk-generate-max-new-tokens-0", "passk --model {model} --task arith --max-new-tokens 0 --out out",
         "argument --max-new-tokens: must be >= 1, got 0"),
    Case("passk-generate-temperature-negative", "passk --model {model} --task arith --temperature -1 --out out",
         "argument --temperature: must be >= 0"),
    Case("passk-generate-limit-negative", "passk --model {model} --task arith --limit -1 --out out",
         "argument --limit: must be >= 0, got -1"),
    Case("passk-generate-top-p-0", "passk --model {model} --task arith --top-p 0 --out out", "argument --top-p: must be > 0"),
    Case("passk-generate-n-0", "passk --model {model} --task arith --n 0 --out out", "--n must be >= 1, got 0"),
    Case("passk-generate-split-bogus", "passk --model {model} --task arith --split dev --out out", "unknown split 'dev'"),
    Case("passk-generate-without-task", "passk --model {model} --out out", "--model needs --task NAME"),
    # --- probe --------------------------------------------------------------------------------------------------
    Case("probe-missing-answer", "probe confidence --model {model} --data p.jsonl --out out", "line 1: missing \"answer\"",
         {"p.jsonl": json.dumps({"prompt": "1+1="}) + "\n"}),
    Case("probe-m-0", "probe confidence --model {model} --data prompts.jsonl --out out --m 0", "--m must be >= 1", PROMPTS),
    Case("probe-temperature-negative", "probe confidence --model {model} --data prompts.jsonl --out out --temperature -2",
         "--temperature must be >= 0", PROMPTS),
    Case("probe-response-not-string", "probe confidence --model {model} --data p.jsonl --out out",
         "line 1: \"response\" must be a string", {"p.jsonl": json.dumps({"prompt": "1+1=", "answer": 2, "response": 5}) + "\n"}),
    # --- audit ----------------------------------------------------------------------------------------------------
    Case("audit-requirements-missing", "audit --requirements none.txt", "none.txt"),
    Case("audit-deepspeed-bad-json", "audit --deepspeed-config ds.json", "ds.json", {"ds.json": "{\"zero_optimization\": \n"}),
    Case("audit-trainer-args-bad", "audit --trainer-args t.yaml", "t.yaml", {"t.yaml": "a: [\n"}),
    # --- experiments -------------------------------------------------------------------------------------------
    Case("fork-vs-rl-seeds-0", "experiment fork-vs-rl --out out --seeds 0", "--seeds must be >= 1"),
    Case("fork-vs-rl-intervene-seeds-0", "experiment fork-vs-rl --out out --set intervene_seeds=0", "intervene_seeds=0"),
    Case("sft-then-rl-seeds-0", "experiment sft-then-rl --out out --set seeds=0", "seeds=0 is out of range"),
    Case("sft-then-rl-relift-every-0", "experiment sft-then-rl --out out --set relift_sft_every=0", "relift_sft_every=0"),
    Case("boundary-passk-n-0", "experiment boundary --out out --set passk.n=0", "passk.n=0"),
    Case("boundary-turn-tokens-0", "experiment boundary --out out --set agent_rl.sampling.turn_tokens=0",
         "agent_rl.sampling.turn_tokens=0"),
    Case("rewards-confidence-m-0", "experiment rewards --out out --set confidence_m=0", "confidence_m=0"),
    Case("rewards-eval-samples-0", "experiment rewards --out out --set eval_samples=0", "eval_samples=0"),
    Case("levers-replay-frac-2", "experiment levers --out out --set levers.replay_frac=2", "levers.replay_frac=2.0 is out of range"),
    Case("boundary-organism-bogus", "experiment boundary --out out --set organisms=bogus", "'bogus' is not one of 'arith', 'agent'"),
    Case("levers-arith-run-bogus", "experiment levers --out out --set arith_runs=grpo,bogus",
         "'bogus' is not one of 'grpo', 'snr', 'top_entropy'"),
    Case("levers-sft-order-bogus", "experiment levers --out out --set sft_orders=bogus", "'bogus' is not one of 'shuffle'"),
    Case("fork-vs-rl-gate-bogus", "experiment fork-vs-rl --out out --set intervene_gates=sometimes", "unknown gate 'sometimes'"),
    Case("fork-vs-rl-method-bogus", "experiment fork-vs-rl --out out --set methods=ppo", "unknown method 'ppo'"),
    Case("sft-then-rl-method-bogus", "experiment sft-then-rl --out out --methods ppo", "unknown method(s) ['ppo']"),
    Case("rewards-run-bogus", "experiment rewards --out out --set runs=bogus", "unknown runs ['bogus']"),
    Case("levers-quantile-2", "experiment levers --out out --set levers.top_entropy_quantile=2",
         "levers.top_entropy_quantile=2.0"),
]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """A tiny saved model, and broken copies of it (truncated / garbage weights, no or broken config)."""
    import shutil

    from conftest import make_tiny

    root = tmp_path_factory.mktemp("bad-input-models")
    model, tok = make_tiny("llama")
    good = root / "tiny"
    model.save_pretrained(str(good))
    tok.save_pretrained(str(good))
    dirs = {"model": good}
    for name in ("trunc", "garbage", "noconfig", "badjson"):
        shutil.copytree(good, root / name)
        dirs[name] = root / name
    weights = (good / "model.safetensors").read_bytes()
    (dirs["trunc"] / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (dirs["garbage"] / "model.safetensors").write_bytes(b"not a safetensors file at all")
    (dirs["noconfig"] / "config.json").unlink()
    (dirs["badjson"] / "config.json").write_text("{\"model_type\": llama}")
    return dirs


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "thesis.txt").write_text("a user's file that must survive\n")
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    before = snapshot(tmp_path)
    argv = case.argv.format(**{k: str(v) for k, v in model_dirs.items()}).split()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse rejects a malformed flag before the command runs
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert case.message in err, err
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing the user had is lost or changed
    assert not (tmp_path / "out" / "model").exists()  # no result written for a run that never ran


def test_suite_size():
    assert len({c.id for c in CASES}) == len(CASES) >= 80


def test_degenerate_group_size_warns(capsys):
    from forklens.commands._common import resolve_config
    from forklens.experiments.demo import RLConfig

    class Args:
        config = None
        overrides = ["sampling.group_size=1"]

    with pytest.warns(ForklensWarning, match="sampling.group_size=1 .*every advantage is zero"):
        cfg = resolve_config(RLConfig, Args())
    assert cfg.sampling.group_size == 1  # legal: the run goes on


def test_cli_warns_once_about_a_degenerate_setting(model_dirs, capsys):
    rc = main(["train", "grpo", "--model", str(model_dirs["model"]), "--set", "sampling.group_size=1",
               "--print-config"])
    err = capsys.readouterr().err
    assert rc == 0
    assert err.count("warning:") == 1  # the config is resolved in two passes but warned about once
    assert "forklens train: warning: sampling.group_size=1 (override 'sampling.group_size=1'): every advantage" in err


def test_cli_prints_a_warning_as_one_line(model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "1+1=\u20ac", "response": ""}) + "\n")
    rc = main(["train", "sft", "--model", str(model_dirs["model"]), "--data", "data.jsonl", "--out", "out",
               "--set", "train.max_steps=1", "--set", "batch_size=1"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "forklens train: warning: data.jsonl: 1 empty prompt(s) or response(s) (first: the response on line 1)" in err
    assert "outside the vocabulary" in err and "data.jsonl line 1: '\u20ac'" in err
    assert "ForklensWarning" not in err  # one line, not Python's two-line warning format
    assert err.count("warning:") == 2
    assert os.path.isdir(tmp_path / "out" / "model")


USER_ERRORS = {
    "missing-file": (FileNotFoundError(2, "No such file or directory", "runs/x/model.bin"),
                     "forklens evaluate: error: No such file or directory: runs/x/model.bin"),
    "not-a-directory": (NotADirectoryError(20, "Not a directory", "thesis.txt/x"), "Not a directory: thesis.txt/x"),
    "permission": (PermissionError(13, "Permission denied", "/root/x"), "Permission denied: /root/x"),
    "json": (json.JSONDecodeError("Expecting value", "{\n x", 3), "not valid JSON: Expecting value at line 2 column 2"),
    "safetensors": (None, "truncated or corrupt: Error while deserializing header"),
    "torch-pickle": (RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"),
                     "truncated or corrupt: PytorchStreamReader"),
    "unpickling": (pickle.UnpicklingError("invalid load key, 'x'."), "invalid load key"),
}


@pytest.mark.parametrize("name", list(USER_ERRORS))
def test_user_caused_errors_exit_2_with_one_line(name, monkeypatch, capsys):
    """Errors that come from a user's file or path, wherever they surface, are one line and exit 2."""
    import forklens.commands.evaluate as evaluate_cmd

    exc, message = USER_ERRORS[name]
    if exc is None:
        from safetensors import SafetensorError

        exc = SafetensorError("Error while deserializing header: incomplete metadata")

    def fail(args):
        raise exc

    monkeypatch.setattr(evaluate_cmd, "run", fail)
    assert main(["evaluate", "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("exc", [KeyError("x"), ValueError("bad"), RuntimeError("CUDA error: device-side assert"),
                                 ZeroDivisionError("division by zero")], ids=lambda e: type(e).__name__)
def test_a_bug_keeps_its_traceback(exc, monkeypatch):
    """Anything that is not clearly the user's input is a bug: main lets it propagate (a traceback)."""
    import forklens.commands.evaluate as evaluate_cmd

    def fail(args):
        raise exc

    monkeypatch.setattr(evaluate_cmd, "run", fail)
    with pytest.raises(type(exc)):
        main(["evaluate", "--model", "m"])
