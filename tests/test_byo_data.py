"""Bring your own data and reward (issue 16): JSONL / JSON / parquet / datasets folders in TRL's and verl's
formats, --data and --reward on train grpo / train sft / evaluate / passk, on a byte-level BPE GPT-2 with a
chat template and no pad token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from forklens.cli import main
from forklens.errors import ConfigError, DataError
from forklens.policy import Policy
from forklens.rewards import answer_reward, load_reward, problems_from
from forklens.tasks.dataset import DataColumns, completion_text, load_dataset_task, read_rows

ROWS = [{"id": f"q{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(6)]
CHAT = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
REWARD_PY = '''
def length_bonus(prompts, completions, answer, **kwargs):
    """TRL signature; records what it was given so the test can check the columns."""
    import json, os
    with open(os.environ["REWARD_LOG"], "a") as fh:
        fh.write(json.dumps({"n": len(completions), "keys": sorted(kwargs), "answer": list(answer)}) + "\\n")
    return [float(len(c) > 0) for c in completions]
'''


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = ["user: 1+1=\nassistant: 2", "user: 世界 3+3=\nassistant: 6", "0123456789 +="] * 30
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>")  # no pad token
    tok.chat_template = CHAT
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    out = tmp_path_factory.mktemp("byo") / "gpt2"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------ reading


def test_every_file_kind_gives_the_same_problems(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    jsonl = _jsonl(tmp_path / "d.jsonl", ROWS)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:4]),
                          "test": datasets.Dataset.from_list(ROWS[4:])}).save_to_disk(str(tmp_path / "dd"))
    want = [(p["id"], p["prompt"], p["answer"]) for p in ROWS]
    for path in (jsonl, js, tmp_path / "d.parquet", tmp_path / "folder"):
        task = load_dataset_task(path)
        assert [(p.id, p.prompt, p.answer) for p in task.problems("train")] == want, path
    assert [p.id for p in load_dataset_task(tmp_path / "dd").problems("train")] == ["q0", "q1", "q2", "q3"]
    assert [p.id for p in load_dataset_task(tmp_path / "dd", default_split="test").problems("test")] == ["q4", "q5"]
    cols = DataColumns(split="nope")
    with pytest.raises(DataError, match="splits train, test; choose one with --data-split"):
        load_dataset_task(tmp_path / "dd", cols)


def test_trl_and_verl_row_formats(tmp_path):
    rows = [
        {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1="}], "answer": 2},
        {"messages": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}], "answer": "4"},
        {"prompt": "3+3=", "completion": [{"role": "assistant", "content": "6"}], "solution": "6"},
        {"prompt": [{"role": "user", "content": "4+4="}], "reward_model": {"ground_truth": "8", "style": "rule"},
         "data_source": "toy"},
    ]
    task = load_dataset_task(_jsonl(tmp_path / "mixed.jsonl", rows))
    ps = task.problems("train")
    assert ps[0].prompt[0] == {"role": "system", "content": "be brief"} and ps[0].answer == "2"
    assert ps[1].prompt == [{"role": "user", "content": "2+2="}] and task.expert_response(ps[1]) == "4"
    assert ps[2].answer == "6" and task.expert_response(ps[2]) == "6"
    assert ps[3].answer == "8" and ps[3].meta["data_source"] == "toy"
    assert [p.id for p in ps] == ["row0", "row1", "row2", "row3"]
    assert task.verify(ps[3], [{"role": "assistant", "content": "so \\boxed{8}"}]) == 1.0
    assert task.verify(ps[3], "the answer is 9") == 0.0


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "a", "answer": 1}\n{"text": "b"}\n', "d.jsonl line 2: no prompt column"),
    ('{"prompt": 5, "answer": 1}\n', "d.jsonl line 1: 'prompt' must be a string or a list of chat messages, got int"),
    ('{"prompt": [{"role": "wizard", "content": "x"}], "answer": 1}\n', "d.jsonl line 1: prompt[0] has role 'wizard'"),
    ('{"prompt": [{"role": "user"}], "answer": 1}\n', "d.jsonl line 1: prompt[0] must be an object with string"),
    ('{"prompt": "a", "answer": [1]}\n', "d.jsonl line 1: the answer ('answer') must be a string or a number, got list"),
    ('{"prompt": "a", "answer": 1, "id": 3}\n{"prompt": "b", "answer": 2, "id": 3}\n', "d.jsonl line 2: duplicate id '3'"),
    ('{"prompt": "a"}\n', "d.jsonl line 1: no answer column"),
    ('\n{"prompt": "a", "answer": 1}\n{oops\n', "d.jsonl line 3: not valid JSON"),
])
def test_bad_rows_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "d.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_dataset_task(path, require_answer=True)
    assert message in str(err.value)
    assert path.read_text(encoding="utf-8") == text  # nothing lost


def test_directory_and_parquet_errors(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a datasets save_to_disk folder"):
        read_rows(tmp_path / "plain")
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="x.parquet"):
        read_rows(bad)


# ------------------------------------------------------------------------------------------ rewards


def test_rewards_take_chat_completions_and_trl_columns():
    chat = [[{"role": "assistant", "content": "it is \\boxed{4}"}], [{"role": "assistant", "content": "5"}]]
    prompts = [[{"role": "user", "content": "2+2="}]] * 2
    assert answer_reward(prompts, chat, answer=["4", "4"]) == [1.0, 0.0]
    assert answer_reward(prompts, ["\\boxed{4}", "5"], answer=["4", None]) == [1.0, None]
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    ps = problems_from(prompts, answer=[4, 4], plan=[["x"], ["y"]])
    assert ps[0].answer == "4" and ps[1].meta == {"plan": ["y"]} and ps[0].prompt == "2+2="
    with pytest.raises(TypeError, match="a completion must be a string"):
        completion_text(3)


def test_load_reward_specs(tmp_path, monkeypatch):
    f = tmp_path / "myrew.py"
    f.write_text(REWARD_PY)
    assert load_reward(f"{f}:length_bonus").__name__ == "length_bonus"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_reward("myrew:length_bonus").__name__ == "length_bonus"
    for spec, msg in [("myrew", "expected MODULE:FUNCTION"), ("nosuchmod:f", "no module 'nosuchmod'"),
                      ("myrew:nope", "has no 'nope' (callables: length_bonus)"),
                      (f"{tmp_path}/missing.py:f", "missing.py does not exist")]:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            load_reward(spec)


# ------------------------------------------------------------------------------------------ commands


def test_chat_prompts_use_the_template(model_dir):
    policy = Policy.load(model_dir)
    ids = policy.encode_prompt([{"role": "user", "content": "1+1="}])
    assert policy.tokenizer.decode(ids) == "user: 1+1=\nassistant: "
    s = policy.sample([[{"role": "user", "content": "1+1="}], "1+1="], n=1, temperature=0, max_new_tokens=3)
    assert s.prompt_ids[0] == ids and s.prompt_ids[1] != ids


def test_grpo_with_your_data_and_reward(model_dir, tmp_path, monkeypatch):
    data = _jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"],
                                            "difficulty": i} for i, r in enumerate(ROWS)])
    (tmp_path / "rew.py").write_text(REWARD_PY)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("REWARD_LOG", str(log))
    out = tmp_path / "grpo"
    rc = main(["train", "grpo", "--model", str(model_dir), "--data", str(data), "--reward", f"{tmp_path}/rew.py:length_bonus",
               "--reward", "forklens.rewards:answer_reward", "--reward-weights", "0.5,1", "--out", str(out),
               "--set", "train.max_steps=2", "--set", "sampling.group_size=2", "--set", "sampling.prompts_per_step=2",
               "--set", "sampling.max_new_tokens=4", "--set", "train.save_every=0"])
    assert rc == 0
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert len([m for m in metrics if "reward/length_bonus" in m]) == 2
    assert all("reward/answer_reward" in m for m in metrics if "reward/length_bonus" in m)
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls and all(c["n"] == 4 for c in calls)
    assert {"difficulty", "problem", "id"} <= set(calls[0]["keys"])  # TRL-style dataset columns
    assert (out / "model" / "config.json").is_file()


def test_evaluate_sft_and_passk_on_your_files(model_dir, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "eval.parquet")
    assert main(["evaluate", "--model", str(model_dir), "--data", str(tmp_path / "eval.parquet"),
                 "--set", "max_new_tokens=4"]) == 0
    assert "on 6 test problems" in capsys.readouterr().err
    msgs = _jsonl(tmp_path / "msgs.jsonl", [{"messages": [{"role": "user", "content": r["prompt"]},
                                                         {"role": "assistant", "content": r["answer"]}]}
                                           for r in ROWS])
    assert main(["train", "sft", "--model", str(model_dir), "--data", str(msgs), "--out", str(tmp_path / "sft"),
                 "--set", "train.max_steps=2", "--set", "batch_size=3", "--set", "train.save_every=0"]) == 0
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    assert main(["passk", "--model", str(model_dir), "--data", str(tmp_path / "eval.parquet"), "--n", "2",
                 "--max-new-tokens", "4", "--out", str(tmp_path / "pk")]) == 0
    lines = (tmp_path / "pk" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 12


def test_data_and_task_conflict(model_dir, tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", ROWS)
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data), "--task", "arith"]) == 2
    assert "give --data or --task, not both" in capsys.readouterr().err
    assert main(["train", "grpo", "--model", str(model_dir), "--data", str(data), "--reward-weights", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--reward-weights needs --reward" in capsys.readouterr().err


def test_diff_and_intervene_read_parquet_and_messages(model_dir, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"id": r["id"], "prompt": [{"role": "user", "content": r["prompt"] + " 世界"}], "answer": r["answer"]}
            for r in ROWS[:3]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    out = tmp_path / "diff"
    assert main(["diff", "--base", str(model_dir), "--rl", str(model_dir), "--prompts", str(tmp_path / "p.parquet"),
                 "--max-new-tokens", "4", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 3 and summary["unshifted_frac"] == 1.0  # a model against itself
    resp = [json.loads(x) for x in (out / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
    assert resp[0]["prompt"] == "user: 0+0= 世界" and [r["prompt_id"] for r in resp] == ["q0", "q1", "q2"]
    out2 = tmp_path / "iv"
    assert main(["intervene", "--base", str(model_dir), "--rl", str(model_dir), "--data", str(tmp_path / "p.parquet"),
                 "--gate", "oracle", "--max-new-tokens", "4", "--seeds", "1", "--out", str(out2)]) == 0
    iv = json.loads((out2 / "summary.json").read_text())
    assert iv["n_prompts"] == 3 and iv["accuracy"]["oracle"] == iv["accuracy"]["base"]


def test_passk_reads_lm_eval_log_samples(tmp_path, capsys):
    lines = [
        {"doc_id": 0, "target": "4", "resps": [["so \\boxed{4}", "5", "4"]], "filtered_resps": ["4"]},
        {"doc_id": 1, "target": ["7"], "resps": [["6"], ["8"], ["The answer is 7"]], "filtered_resps": ["6"]},
    ]
    path = tmp_path / "samples_gsm8k_2026-11-29T10-00-00.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "pk"
    assert main(["passk", "--lm-eval", str(path), "--k", "1,3", "--out", str(out)]) == 0
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["correct"] for s in samples] == [True, False, True, False, False, True]
    assert {s["model"] for s in samples} == {"gsm8k"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass_at_k"]["gsm8k"]["0"] == {"1": pytest.approx(0.5), "3": 1.0}  # (2/3 + 1/3) / 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"doc_id": 0, "target": "1", "resps": [[0.5, True]]}) + "\n")
    assert main(["passk", "--lm-eval", str(bad), "--out", str(tmp_path / "pk2")]) == 2
    assert "bad.jsonl line 1: resps must hold generated strings" in capsys.readouterr().err


def test_verl_compute_score_adapter():
    from forklens.rewards import compute_score, verl_compute_score
    from forklens.rewards.metacognition import TaggedGrader, mar_reward, write_structured

    assert compute_score("gsm8k", "so the answer is \\boxed{12}", "12") == 1.0
    assert compute_score("gsm8k", "13", "12", extra_info={"index": 3}) == 0.0
    mar = verl_compute_score(mar_reward(TaggedGrader()))
    text = write_structured(["a is 1"], ["add"], "add a and b", "3")
    assert mar("toy", text, "3") == 1.0  # only cr applies without knowledge/plan columns (kmr, rmr None)
    seen = {}

    def spy(prompts, completions, answer, data_source, extra_info, **kw):
        seen.update(answer=answer, data_source=data_source, extra_info=extra_info)
        return [None]

    assert verl_compute_score(spy)("src", "x", "y", {"i": 1}) == 0.0
    assert seen == {"answer": ["y"], "data_source": ["src"], "extra_info": [{"i": 1}]}
