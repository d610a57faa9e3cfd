"""A policy = a model + a scaffold (skill text, prompt template): the scaffold-aware `forklens diff`
and `forklens diff-overlap` (issue 19, arXiv 2605.23904 / 2605.27276)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.analysis.diff import run_diff
from forklens.analysis.diff_overlap import compare_diffs, load_token_rows, spearman
from forklens.cli import main
from forklens.errors import ConfigError, DataError
from forklens.policy.scaffold import Scaffold, load_scaffold
from tests.test_diff import PROMPTS, dirs, policies, tok  # noqa: F401,F811  (module fixtures: tiny llama/gpt2 pairs)

SKILL = "1+1=2;2+2=4;"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# the scaffold itself


def test_scaffold_applies_to_text_and_chat():
    s = Scaffold(skill="RULES", template="Q: {prompt}\nA:")
    assert s.apply("2+2=") == "RULES\nQ: 2+2=\nA:"
    assert Scaffold(skill="R", template="{skill} | {prompt}").apply("x") == "R | x"
    assert Scaffold().apply("x") == "x" and Scaffold().is_identity
    chat = [{"role": "user", "content": "hi"}]
    assert s.apply(chat) == [{"role": "system", "content": "RULES"}, {"role": "user", "content": "Q: hi\nA:"}]
    with_system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert Scaffold(skill="RULES").apply(with_system)[0] == {"role": "system", "content": "RULES\nbe brief"}
    assert chat == [{"role": "user", "content": "hi"}]  # the input is not modified
    with pytest.raises(DataError, match="needs a user message"):
        Scaffold(template="Q: {prompt}").apply([{"role": "system", "content": "x"}])


@pytest.mark.parametrize("template,message", [
    ("Q:", "has no {prompt} field"),
    ("{prompt} {answer}", r"unknown field\(s\) {answer}"),
    ("{prompt", "not a valid format string"),
])
def test_bad_templates_are_clear_errors(template, message):
    with pytest.raises(ConfigError, match=message):
        load_scaffold(template=template, what="--rl-template")


def test_skill_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="--rl-skill: .*absent.md is not a file"):
        load_scaffold(tmp_path / "absent.md", what="--rl-skill")
    (tmp_path / "empty.md").write_text("\n\n")
    with pytest.raises(DataError, match="empty.md is empty"):
        load_scaffold(tmp_path / "empty.md")
    (tmp_path / "bin.md").write_bytes(b"ok\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_scaffold(tmp_path / "bin.md")
    (tmp_path / "s.md").write_text("世界 rules\n", encoding="utf-8")
    s = load_scaffold(tmp_path / "s.md", "Q {prompt}")
    assert s.skill == "世界 rules" and s.describe()["skill_file"] == str(tmp_path / "s.md")


@settings(max_examples=40, deadline=None)
@given(skill=st.text(max_size=12), prompt=st.text(max_size=12), pre=st.text(alphabet="ab :\n", max_size=5))
def test_template_fills_in_exactly(skill, prompt, pre):
    s = Scaffold(skill=skill, template=pre.replace("{", "").replace("}", "") + "{prompt}")
    text = s.apply(prompt)
    assert text.endswith(prompt)
    assert text.startswith(f"{skill}\n" if skill else "")


# ---------------------------------------------------------------------------------------------
# the scaffold-aware diff against a direct computation


def _direct(policy, prompt_ids: list[int], response: list[int]) -> torch.Tensor:
    """Log-probs at the response positions from one unpadded forward pass."""
    with torch.no_grad():
        logits = policy.model(torch.tensor([prompt_ids + response])).logits[0].float()
    return torch.log_softmax(logits[len(prompt_ids) - 1:len(prompt_ids) + len(response) - 1], -1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_side_reads_its_own_scaffolded_prompt(arch, policies, tmp_path):  # noqa: F811
    base, rl = policies[arch]
    rl_scaffold = Scaffold(skill=SKILL, template="{prompt}")
    base_scaffold = Scaffold(template="a {prompt}")
    # a small batch budget packs prompts of different lengths into several batches
    summary = run_diff(base, rl, PROMPTS[:5], max_new_tokens=10, out_dir=tmp_path, batch_tokens=40,
                       base_scaffold=base_scaffold, rl_scaffold=rl_scaffold)
    assert summary["scaffolds"]["rl"]["skill_chars"] == len(SKILL)
    assert summary["scaffolds"]["base"]["template"] == "a {prompt}"
    rows = _read_jsonl(tmp_path / "tokens.jsonl")
    resp = _read_jsonl(tmp_path / "responses.jsonl")
    for meta in resp:
        rec = next(p for p in PROMPTS if p["id"] == meta["prompt_id"])
        y = [r["token_id"] for r in rows if r["prompt_id"] == meta["prompt_id"]]
        pb = base.encode_prompt(base_scaffold.apply(rec["prompt"]))
        pr = rl.encode_prompt(rl_scaffold.apply(rec["prompt"]))
        # rl-greedy responses come from the RL side's scaffolded prompt
        greedy = rl.sample([pr], n=1, temperature=0.0, max_new_tokens=10, seed=0).response_ids[0]
        assert y == list(greedy)
        lb, lr = _direct(base, pb, y), _direct(rl, pr, y)
        mine = [r for r in rows if r["prompt_id"] == meta["prompt_id"]]
        for t, row in enumerate(mine):
            rl_tok = int(lr[t].argmax())
            assert row["rl_token_id"] == rl_tok
            assert row["rank_under_base"] == 1 + int((lb[t] > lb[t, rl_tok]).sum())
            kl = float((lb[t].exp() * (lb[t] - lr[t])).sum())
            assert row["kl_base_rl"] == pytest.approx(kl, abs=2e-5)
            assert row["base_logprob_token"] == pytest.approx(float(lb[t, y[t]]), abs=2e-4)


def test_identity_scaffolds_change_nothing(policies, tmp_path):  # noqa: F811
    base, rl = policies["llama"]
    plain = run_diff(base, rl, PROMPTS[:4], max_new_tokens=8)
    same = run_diff(base, rl, PROMPTS[:4], max_new_tokens=8, base_scaffold=Scaffold(), rl_scaffold=Scaffold())
    plain.pop("scaffolds"), same.pop("scaffolds")
    assert plain == same


def test_a_scaffold_moves_tokens_of_the_same_model(policies):  # noqa: F811
    base, _ = policies["llama"]
    none = run_diff(base, base, PROMPTS[:4], max_new_tokens=8)
    skill = run_diff(base, base, PROMPTS[:4], max_new_tokens=8, rl_scaffold=Scaffold(skill=SKILL))
    assert none["unshifted_frac"] == 1.0 and none["kl_mean"] == 0.0
    assert skill["kl_mean"] > 0.0  # same weights, different context: the distributions differ


# ---------------------------------------------------------------------------------------------
# diff-overlap


def _row(pid, pos, token, rank, rl_tok, kl, sid=0):
    return {"prompt_id": pid, "sample_id": sid, "position": pos, "token_id": token, "rank_under_base": rank,
            "rl_token_id": rl_tok, "kl_base_rl": kl}


def test_compare_diffs_counts_by_hand():
    # 8 tokens over 2 prompts; A moves positions {0,1,2,5}, B moves {1,2,3}; same token at 1 only
    a = [_row("p", i, 7, r, t, kl) for i, (r, t, kl) in enumerate(
        [(2, 1, .5), (3, 4, .4), (2, 5, .3), (1, 7, .0)])] + \
        [_row("q", i, 7, r, 9, kl) for i, (r, kl) in enumerate([(1, .0), (4, .9), (1, .1), (1, .2)])]
    b = [_row("p", i, 7, r, t, kl) for i, (r, t, kl) in enumerate(
        [(1, 7, .1), (2, 4, .5), (6, 6, .2), (2, 3, .3)])] + \
        [_row("q", i, 7, 1, 7, kl) for i, kl in enumerate([.0, .1, .2, .3])]
    s = compare_diffs(a, b, resamples=200)
    assert (s["n_tokens"], s["moved_a"], s["moved_b"], s["moved_both"]) == (8, 4, 3, 2)
    assert s["recall_of_b"]["mean"] == pytest.approx(2 / 3)
    assert s["precision_of_b"]["mean"] == pytest.approx(2 / 4)
    assert s["jaccard"]["mean"] == pytest.approx(2 / 5)
    assert s["lift"]["mean"] == pytest.approx(2 * 8 / (4 * 3))
    assert s["same_token"]["mean"] == pytest.approx(1 / 2)
    assert s["recall_of_b"]["low"] <= 2 / 3 <= s["recall_of_b"]["high"]
    kls = [(.5, .1), (.4, .5), (.3, .2), (.0, .3), (.0, .0), (.9, .1), (.1, .2), (.2, .3)]
    assert s["kl_spearman"] == pytest.approx(spearman([x for x, _ in kls], [y for _, y in kls]))


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take average ranks: x ranks 1.5,1.5,3,4 vs y ranks 1,2,3,4
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [2, 1]) is None


def test_compare_diffs_refuses_different_responses():
    a = [_row("p", 0, 5, 2, 1, .1)]
    with pytest.raises(DataError, match="scored different responses .*--responses FIRST/responses.jsonl"):
        compare_diffs(a, [_row("p", 0, 6, 2, 1, .1)])
    with pytest.raises(DataError, match="share no"):
        compare_diffs(a, [_row("z", 0, 5, 2, 1, .1)])


def test_cli_skill_vs_rl_end_to_end(dirs, tmp_path, capsys):  # noqa: F811
    base_dir, rl_dir = dirs["llama"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:4]))
    skill = tmp_path / "SKILL.md"
    skill.write_text(SKILL + "\n")
    a, b = tmp_path / "skill", tmp_path / "rl"
    assert main(["diff", "--base", str(base_dir), "--rl-skill", str(skill), "--data", str(prompts),
                 "--max-new-tokens", "6", "--out", str(a), "--no-progress"]) == 0
    summary_a = json.loads((a / "summary.json").read_text())
    assert summary_a["rl_model"] == summary_a["base_model"] and summary_a["scaffolds"]["rl"]["skill_file"] == str(skill)
    assert main(["diff", "--base", str(base_dir), "--rl", str(rl_dir), "--data", str(prompts),
                 "--responses", str(a / "responses.jsonl"), "--out", str(b), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["diff-overlap", str(a), str(b), "--out", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "recall" in out and "lift over chance" in out
    o = json.loads((tmp_path / "o.json").read_text())
    ra, rb = load_token_rows(a), load_token_rows(b)
    assert o["n_tokens"] == len(ra) == len(rb)
    assert o["moved_a"] == sum(r["rank_under_base"] > 1 for r in ra)
    assert o["moved_b"] == sum(r["rank_under_base"] > 1 for r in rb)
    # a second run refuses to overwrite the summary without --overwrite
    assert main(["diff-overlap", str(a), str(b), "--out", str(tmp_path / "o.json")]) == 2


def test_cli_needs_rl_or_an_rl_scaffold(dirs, tmp_path, capsys):  # noqa: F811
    base_dir, _ = dirs["llama"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(PROMPTS[0]) + "\n")
    assert main(["diff", "--base", str(base_dir), "--data", str(prompts), "--out", str(tmp_path / "x")]) == 2
    assert "--rl is required" in capsys.readouterr().err
    assert main(["diff-overlap", str(tmp_path), str(tmp_path)]) == 2
    assert "neither tokens.jsonl nor tokens.parquet" in capsys.readouterr().err
