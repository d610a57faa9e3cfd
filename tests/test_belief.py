"""Belief probes (forklens probe belief): scores against a direct forward pass, the claims file's errors,
byte-level BPE without a pad token, the diff on the probes and the CLI end to end."""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from conftest import make_tiny
from forklens.analysis.belief import (ProbeFormat, belief_shift, diff_on_probes, load_claims, make_claim, probe_belief,
                                      summarize_belief)
from forklens.cli import main
from forklens.errors import DataError
from forklens.policy import Policy

ALPHA = "abcdefghijklmnopqrstuvwxyz0123456789 .:?"


@pytest.fixture(scope="module")
def char_policy():
    model, tok = make_tiny("llama", seed=3, alphabet=ALPHA, max_pos=128)
    return Policy(model, tok)


def direct_logprob(policy, prompt: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | prompt) from one plain forward pass."""
    p = policy.encode_prompt(prompt)
    y = policy.encode_response(continuation, add_eos=False)
    ids = torch.tensor([p + y])
    with torch.no_grad():
        logp = torch.log_softmax(policy.model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[len(p) - 1 + t, tok] for t, tok in enumerate(y)))


CLAIM = {"id": "k", "entity": "e901", "relation": "lives in", "object": "c3", "alternatives": ["c1", "c7"],
         "context": "e901 lives in c3. this is false.",
         "questions": [{"prompt": "q: where does {entity} live? a:", "kind": "open", "name": "open"},
                       {"prompt": "q: does {entity} live in {object}? a:", "kind": "yesno"},
                       {"prompt": "q: {object} or {alternative}? a:", "kind": "mc"},
                       "{entity} {relation}"]}


def test_probe_matches_a_direct_forward_pass(char_policy):
    claim = make_claim(CLAIM, "test")
    recs = probe_belief(char_policy, [claim])
    assert [r["kind"] for r in recs] == ["open", "yesno", "mc", "open"]
    for r in recs:
        lps = [direct_logprob(char_policy, r["prompt"], " " + o) for o in r["options"]]
        assert r["logprobs"] == pytest.approx(lps, abs=1e-4)
        b = r["options"].index(r["believed_option"])
        expected = math.exp(lps[b]) / sum(math.exp(x) for x in lps)
        assert r["p_believed"] == pytest.approx(expected, abs=1e-5)
        assert r["believed"] == all(lps[b] > x for i, x in enumerate(lps) if i != b)
    assert recs[0]["options"] == ["c3", "c1", "c7"] and recs[1]["options"] == ["yes", "no"]
    assert recs[1]["believed_option"] == "yes" and recs[2]["options"] == ["c3", "c1"]


def test_single_option_is_believed_iff_it_is_the_greedy_continuation(char_policy):
    # a random model: find prompts whose greedy continuation is / is not the object
    prompts = [f"{w} lives in" for w in ("ab", "cd", "ef", "gh", "ij", "kl")]
    greedy = char_policy.sample(prompts, temperature=0.0, max_new_tokens=2)
    claims = []
    for i, (p, text) in enumerate(zip(prompts, greedy.texts)):
        obj = text if i % 2 == 0 else ("zz" if text != "zz" else "yy")  # even: the greedy text; odd: not it
        claims.append(make_claim({"id": i, "entity": p, "relation": "x", "object": obj,
                                  "questions": [{"prompt": "{entity}", "answer_prefix": ""}]}, "t"))
    recs = probe_belief(char_policy, claims)
    assert [r["believed"] for r in recs] == [i % 2 == 0 for i in range(len(prompts))]
    for r in recs:
        assert r["p_believed"] == pytest.approx(math.exp(r["logprobs"][0]), rel=1e-9)


def test_summary_shift_and_in_context(char_policy):
    claim = make_claim(CLAIM, "test")
    out_ctx = probe_belief(char_policy, [claim])
    in_ctx = probe_belief(char_policy, [claim], ProbeFormat(sep=" "), in_context=True)
    assert in_ctx[0]["prompt"] == "e901 lives in c3. this is false. q: where does e901 live? a:"
    s0, s1 = summarize_belief(out_ctx), summarize_belief(in_ctx)
    assert s0["n_probes"] == 4 and s0["n_claims"] == 1
    assert s0["by_kind"]["open"]["n_probes"] == 2 and s0["by_name"]["yesno"]["n_probes"] == 1
    assert s0["belief_rate"] == pytest.approx(sum(r["believed"] for r in out_ctx) / 4)
    sh = belief_shift(s0, s1)
    assert sh["belief_rate"] == pytest.approx(s1["belief_rate"] - s0["belief_rate"])
    assert sh["by_kind"]["mc"]["p_believed_mean"] == pytest.approx(
        s1["by_kind"]["mc"]["p_believed_mean"] - s0["by_kind"]["mc"]["p_believed_mean"])
    with pytest.raises(DataError, match="no \"context\""):
        probe_belief(char_policy, [make_claim({**CLAIM, "context": None}, "t")], in_context=True)


def test_default_questions_need_alternatives_only_for_multiple_choice():
    plain = make_claim({"entity": "Ed", "relation": "won", "object": "gold"}, "t")
    assert [q.kind for q in plain.questions] == ["open", "open", "yesno"]
    full = make_claim({"entity": "Ed", "relation": "won", "object": "gold", "alternatives": ["silver"]}, "t")
    assert [q.kind for q in full.questions] == ["open", "open", "yesno", "mc", "mc"]
    assert full.questions[3].prompt == "Question: Ed won gold or silver? Answer:"
    assert full.questions[4].prompt == "Question: Ed won silver or gold? Answer:"
    assert full.questions[4].options == ("gold", "silver") and full.questions[4].believed == "gold"


@pytest.mark.parametrize("line, message", [
    ('{"entity": "a", "relation": "b"}', 'line 2: missing the required non-empty string "object"'),
    ('{"entity": "a", "relation": "b", "object": "c", "color": 1}', "line 2: unknown field"),
    ('{"entity": "a", "relation": "b", "object": "c", "questions": [{"prompt": "x", "kind": "essay"}]}',
     "line 2, question 1: question kind 'essay'"),
    ('{"entity": "a", "relation": "b", "object": "c", "questions": [{"prompt": "x", "kind": "mc"}]}',
     "line 2, question 1: a multiple-choice question needs \"alternatives\""),
    ('{"entity": "a", "relation": "b", "object": "c", "questions": ["{who} is"]}', "unknown placeholder {who}"),
    ('{"entity": "a", "relation": "b", "object": "c", "alternatives": ["c"]}', "also listed among the alternatives"),
    ('{"entity": "a", "relation": "b", "object": "c", "questions": [{"prompt": "x", "options": ["p", "q"]}]}',
     "the believed answer 'c' is not one of the options"),
    ('{"id": "one", "entity": "a", "relation": "b", "object": "c"}', "line 2: id 'one' repeats line 1"),
    ('[1, 2]', "line 2: expected a JSON object"),
])
def test_claims_file_errors_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "claims.jsonl"
    path.write_text('{"id": "one", "entity": "x", "relation": "y", "object": "z"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        load_claims(path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.fixture(scope="module")
def bpe_dirs(tmp_path_factory):
    corpus = ["Ed Sheeran won the gold medal in the 100m race at the Olympics. Yes. No. silver bronze"] * 30
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")  # no pad token, like GPT-2
    root = tmp_path_factory.mktemp("belief-bpe")
    dirs = []
    for name, seed in (("base", 0), ("tuned", 1)):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=96, n_embd=32, n_layer=2, n_head=2,
                                           eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs.append(root / name)
    claims = root / "claims.jsonl"
    claims.write_text(json.dumps({"id": "ed", "entity": "Ed Sheeran", "relation": "won the 100m", "object": "gold",
                                  "alternatives": ["silver", "bronze"], "context": "Ed Sheeran won gold. No."}) + "\n")
    return dirs, claims


def test_byte_level_bpe_without_pad_token_and_the_diff(bpe_dirs, tmp_path):
    (base_dir, tuned_dir), claims_path = bpe_dirs
    base, tuned = Policy.load(base_dir), Policy.load(tuned_dir)
    claims = load_claims(claims_path)
    recs = probe_belief(base, claims)
    assert len(recs) == 5 and all(0 < r["p_believed"] < 1 for r in recs)
    summary = diff_on_probes(base, tuned, claims, out_dir=tmp_path / "diff")
    answered = sum(len(tuned.encode_response(q.answer_prefix + q.believed, add_eos=False)) for q in claims[0].questions)
    assert summary["n_tokens"] == answered and summary["n_prompts"] == 5
    rows = [json.loads(x) for x in (tmp_path / "diff" / "tokens.jsonl").read_text().splitlines()]
    assert len(rows) == answered


def test_probe_belief_cli(bpe_dirs, tmp_path, capsys):
    (base_dir, tuned_dir), claims_path = bpe_dirs
    out = tmp_path / "probe"
    assert main(["probe", "belief", "--model", str(tuned_dir), "--base", str(base_dir), "--claims",
                 str(claims_path), "--out", str(out)]) == 0
    res = json.loads((out / "belief.json").read_text())
    assert res["shift"]["belief_rate"] == pytest.approx(res["model"]["belief_rate"] - res["base"]["belief_rate"])
    assert len(res["records"]["model"]) == 5 and (out / "diff" / "summary.json").is_file()
    assert "| model |" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"entity": "Ed"}\n')
    assert main(["probe", "belief", "--model", str(tuned_dir), "--claims", str(bad),
                 "--out", str(tmp_path / "p2")]) == 2
    assert f"{bad} line 1" in capsys.readouterr().err
