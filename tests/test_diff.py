"""Tests for `forklens diff`: scoring, rows, summary, errors, the CLI, the HTML and a 2-process run."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forklens.tasks.answers import normalise
from forklens.analysis.diff import (
    check_tokenizers_match,
    chunk_pair_stats,
    classify,
    default_verifier,
    run_diff,
    score_pairs,
    summarize,
)
from forklens.analysis.prompts import load_prompts, load_responses
from forklens.cli import main
from forklens.errors import ConfigError, DataError, ModelLoadError
from forklens.policy import Policy
from forklens.report.html import render_diff_report, visible_text
from forklens.organisms.base import build_char_tokenizer

ALPHABET = "abcdefghij0123456789 +=;<>&\"'\n"
CONTEXT = 96


# ----------------------------------------------------------------------------------------------
# tiny models of two architectures
# ----------------------------------------------------------------------------------------------


def _llama(tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def _gpt2(tok, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     tie_word_embeddings=False)
    return GPT2LMHeadModel(cfg)


def _recurrent_prefix(tok, seed: int):
    from forklens.models import RecurrentLMConfig, RecurrentLMForCausalLM

    torch.manual_seed(seed)
    cfg = RecurrentLMConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_attention_heads=2,
                            h_cycles=2, l_cycles=2, prefix_lm=True, prompt_end_token_id=tok.convert_tokens_to_ids("="),
                            max_position_embeddings=CONTEXT, pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return RecurrentLMForCausalLM(cfg)


BUILDERS = {"llama": _llama, "gpt2": _gpt2, "recurrent-prefix": _recurrent_prefix}


def _peaky(model, scale: float) -> None:
    """Scale the output layer so the random model has varied (not near-uniform) distributions."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)


def _save_pair(root: Path, arch: str, tok, noise: float = 0.35) -> tuple[Path, Path]:
    base = BUILDERS[arch](tok, 0)
    _peaky(base, 12.0)
    base_dir, rl_dir = root / f"{arch}-base", root / f"{arch}-rl"
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=gen))
    base.save_pretrained(rl_dir)
    tok.save_pretrained(rl_dir)
    return base_dir, rl_dir


PROMPTS = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "id": f"p{a}{b}"} for a, b in
           [(1, 2), (3, 4), (5, 5), (7, 1), (2, 9), (4, 4)]]
PROMPTS.append({"prompt": "<a&b>\"q\"\n", "id": "weird"})  # no answer: ungraded


def _parity(record: dict, text: str) -> bool:
    return len(text) % 2 == 0


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("models")
    return {arch: _save_pair(root, arch, tok) for arch in BUILDERS}


@pytest.fixture(scope="module")
def policies(dirs):
    return {arch: (Policy.load(b), Policy.load(r)) for arch, (b, r) in dirs.items()}


def _write_jsonl(path: Path, items) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# a plain reference implementation over full logits from model(...).logits
# ----------------------------------------------------------------------------------------------


def _ref_positions(base_model, rl_model, prompt_ids, response_ids):
    """Per-token dicts computed with loops over the full logits of one unpadded sequence at a time."""
    out = []
    with torch.no_grad():
        for p, y in zip(prompt_ids, response_ids):
            ids = torch.tensor([list(p) + list(y)])
            lb_all = base_model(input_ids=ids).logits[0].float()
            lr_all = rl_model(input_ids=ids).logits[0].float()
            per = []
            for t in range(len(y)):
                lb, lr = lb_all[len(p) - 1 + t].tolist(), lr_all[len(p) - 1 + t].tolist()
                V = len(lb)
                a = max(range(V), key=lambda v: (lr[v], -v))  # argmax, lowest id on ties
                rank = 1 + sum(1 for v in range(V) if lb[v] > lb[a])
                zb = math.log(sum(math.exp(x - max(lb)) for x in lb)) + max(lb)
                zr = math.log(sum(math.exp(x - max(lr)) for x in lr)) + max(lr)
                lpb = [x - zb for x in lb]
                lpr = [x - zr for x in lr]
                hb = -sum(math.exp(q) * q for q in lpb)
                hr = -sum(math.exp(q) * q for q in lpr)
                kl = sum(math.exp(lpb[v]) * (lpb[v] - lpr[v]) for v in range(V))
                per.append({"rank": rank, "rl_token": a, "hb": hb, "hr": hr, "kl": kl, "lpb": lpb[a],
                            "lpr": lpr[a], "lpb_y": lpb[y[t]], "lpr_y": lpr[y[t]],
                            "base_top": sorted(range(V), key=lambda v: (-lb[v], v))[:5]})
            out.append(per)
    return out


def _ref_summary(positions: list[dict], n_responses: int, K: int) -> dict:
    """The summary numbers, from their definitions, with plain Python."""
    n = len(positions)
    ranks = [p["rank"] for p in positions]
    ent = [p["hb"] for p in positions]
    dis = [i for i in range(n) if ranks[i] > 1]
    res = {"n_tokens": n, "n_responses": n_responses}
    res["unshifted_frac"] = sum(1 for r in ranks if r == 1) / n
    res["reranked_frac"] = sum(1 for r in ranks if 2 <= r <= K) / n
    res["shifted_frac"] = sum(1 for r in ranks if r > K) / n
    for k in range(1, 11):
        res[f"topk_containment.{k}"] = (sum(1 for i in dis if ranks[i] <= k) / len(dis)) if dis else None
    res["mean_rank_at_disagreement"] = (sum(ranks[i] for i in dis) / len(dis)) if dis else None
    res["entropy_mean_all"] = sum(ent) / n
    res["entropy_mean_disagreement"] = (sum(ent[i] for i in dis) / len(dis)) if dis else None
    res["entropy_ratio"] = (res["entropy_mean_disagreement"] / res["entropy_mean_all"]) if dis else None
    # top decile: the ceil(N/10) highest entropies (at least one), ties at the threshold included
    m = max(1, math.ceil(n / 10))
    thr = sorted(ent)[n - m]
    res["disagreement_in_top_entropy_decile"] = (sum(1 for i in dis if ent[i] >= thr) / len(dis)) if dis else None
    res["kl_mean"] = sum(p["kl"] for p in positions) / n
    for r in range(1, 11):
        res[f"rank_histogram.{r}"] = sum(1 for x in ranks if x == r)
    res["rank_histogram.>10"] = sum(1 for x in ranks if x > 10)
    return res


def _flat(summary: dict) -> dict:
    out = {k: summary[k] for k in ("n_tokens", "n_responses", "unshifted_frac", "reranked_frac", "shifted_frac",
                                   "mean_rank_at_disagreement", "entropy_mean_all", "entropy_mean_disagreement",
                                   "entropy_ratio", "disagreement_in_top_entropy_decile", "kl_mean")}
    out.update({f"topk_containment.{k}": v for k, v in summary["topk_containment"].items()})
    out.update({f"rank_histogram.{k}": v for k, v in summary["rank_histogram"].items()})
    return out


def _assert_same(ours: dict, ref: dict, tol: float = 1e-4) -> None:
    assert set(ours) == set(ref)
    for key, want in ref.items():
        got = ours[key]
        if want is None:
            assert got is None, key
        elif isinstance(want, int) and not isinstance(want, bool):
            assert got == want, key
        else:
            assert got == pytest.approx(want, rel=tol, abs=tol), key


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("top_k", [5, 3])
def test_summary_matches_reference(arch, top_k, policies, tmp_path, tok):
    base, rl = policies[arch]
    summary = run_diff(base, rl, PROMPTS, max_new_tokens=24, top_k=top_k, verifier=_parity, out_dir=tmp_path)
    rows = _read_jsonl(tmp_path / "tokens.jsonl")
    resp = _read_jsonl(tmp_path / "responses.jsonl")
    assert len(resp) == len(PROMPTS) == summary["n_responses"]
    prompt_ids = {p["id"]: base.encode_prompt(p["prompt"]) for p in PROMPTS}
    keys = [(m["prompt_id"], m["sample_id"]) for m in resp]
    response_ids = [[r["token_id"] for r in rows if (r["prompt_id"], r["sample_id"]) == k] for k in keys]
    ref = _ref_positions(base.model, rl.model, [prompt_ids[k[0]] for k in keys], response_ids)

    # per-token values
    flat_ref = [p for per in ref for p in per]
    assert len(rows) == len(flat_ref)
    for row, want in zip(rows, flat_ref):
        assert row["token_id"] == row["rl_token_id"]  # rl-greedy: the response is the RL argmax
        assert row["rl_token_id"] == want["rl_token"]
        assert row["rank_under_base"] == want["rank"]
        assert row["class"] == classify(want["rank"], top_k)
        for key, ref_key in [("base_entropy", "hb"), ("rl_entropy", "hr"), ("base_logprob", "lpb"),
                             ("rl_logprob", "lpr"), ("base_logprob_token", "lpb_y"), ("rl_logprob_token", "lpr_y")]:
            assert row[key] == pytest.approx(want[ref_key], abs=2e-4), key
        assert row["kl_base_rl"] == pytest.approx(want["kl"], abs=2e-5)
        assert row["base_topk_ids"][:5] == want["base_top"]
        assert len(row["base_topk_ids"]) == len(row["rl_topk_ids"]) == max(5, top_k)
    assert any(r["rank_under_base"] > max(5, top_k) for r in rows), "ranks beyond the top-k lists are exercised"
    classes = {r["class"] for r in rows}
    assert classes == {"unshifted", "reranked", "shifted"}

    # every summary number
    _assert_same(_flat(summary), _ref_summary(flat_ref, len(keys), top_k))
    # by correctness
    correct = {(m["prompt_id"], m["sample_id"]): m["correct"] for m in resp}
    assert correct[("weird", 0)] is None
    for name, want in (("correct", True), ("incorrect", False)):
        idx = [i for i, k in enumerate(keys) if correct[k] is want]
        assert idx, "both splits are exercised"
        pos = [p for i in idx for p in ref[i]]
        _assert_same(_flat(summary["by_correctness"][name]), _ref_summary(pos, len(idx), top_k))
    graded = [v for v in correct.values() if v is not None]
    assert summary["correctness"] == {"n_graded": len(graded), "n_correct": sum(graded),
                                      "accuracy": sum(graded) / len(graded)}
    # the written summary is the returned one, strict JSON
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["responses"] == "rl-greedy" and summary["decoding"]["greedy"] is True
    assert summary["base_model"] == base.path and summary["rl_model"] == rl.path
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_self_diff_is_all_unshifted(policies, tmp_path):
    base, _ = policies["llama"]
    summary = run_diff(base, base, PROMPTS[:4], responses="rl-sample", n=2, temperature=1.0,
                       max_new_tokens=16, top_k=5)
    assert summary["unshifted_frac"] == 1.0
    assert summary["reranked_frac"] == 0.0 and summary["shifted_frac"] == 0.0
    assert summary["kl_mean"] == 0.0
    assert summary["mean_rank_at_disagreement"] is None
    assert summary["entropy_mean_disagreement"] is None and summary["entropy_ratio"] is None
    assert summary["disagreement_in_top_entropy_decile"] is None
    assert all(v is None for v in summary["topk_containment"].values())
    json.dumps(summary, allow_nan=False)


def test_self_diff_loaded_twice(dirs, tmp_path):
    b1, b2 = Policy.load(dirs["gpt2"][0]), Policy.load(dirs["gpt2"][0])
    summary = run_diff(b1, b2, PROMPTS[:3], max_new_tokens=12, out_dir=tmp_path)
    assert summary["unshifted_frac"] == 1.0
    rows = _read_jsonl(tmp_path / "tokens.jsonl")
    assert all(r["kl_base_rl"] == pytest.approx(0.0, abs=1e-6) for r in rows)
    assert all(r["rank_under_base"] == 1 for r in rows)


def test_chunking_does_not_change_results(policies):
    base, rl = policies["llama"]
    p = [base.encode_prompt(x["prompt"]) for x in PROMPTS[:4]]
    y = [base.encode_response("0123456789ab" * (i + 1)) for i in range(4)]
    one = score_pairs(base, rl, p, y, chunk_tokens=1, batch_tokens=10)
    big = score_pairs(base, rl, p, y, chunk_tokens=None, batch_tokens=4096)
    for a, b in zip(one, big):
        assert torch.equal(a.rank_under_base, b.rank_under_base)
        assert torch.equal(a.rl_token, b.rl_token)
        assert torch.allclose(a.kl, b.kl, atol=1e-6)
        assert torch.allclose(a.base_entropy, b.base_entropy, atol=1e-5)


def test_fused_statistics_path_gives_the_same_scores(policies):
    """score_pairs with the compiled fused statistics (forklens.analysis.diff_fused) equals the eager path."""
    base, rl = policies["llama"]
    p = [base.encode_prompt(x["prompt"]) for x in PROMPTS[:3]]
    y = [base.encode_response("0123456789ab" * (i + 1)) for i in range(3)]
    eager = score_pairs(base, rl, p, y, fused=False)
    fused = score_pairs(base, rl, p, y, fused=True, chunk_tokens=7)
    for a, b in zip(eager, fused):
        assert torch.equal(a.rank_under_base, b.rank_under_base)
        assert torch.equal(a.rl_token, b.rl_token)
        for key in ("kl", "base_entropy", "rl_entropy", "base_logprob_token", "rl_topk_logprobs"):
            assert torch.allclose(getattr(a, key), getattr(b, key), atol=2e-5, rtol=1e-5), key


def test_rank_tie_rule_and_argmax_ties():
    base = torch.tensor([[1.0, 3.0, 3.0, 0.0]] * 4)
    rl = torch.tensor([[0.0, 0.0, 9.0, 0.0],   # RL token 2 ties with base's best -> rank 1
                       [9.0, 0.0, 0.0, 0.0],   # token 0: two logits strictly greater -> rank 3
                       [0.0, 0.0, 0.0, 9.0],   # token 3: three strictly greater -> rank 4
                       [5.0, 5.0, 0.0, 0.0]])  # RL argmax tie -> lowest id (0) -> rank 3
    s = chunk_pair_stats(base, rl, torch.zeros(4, dtype=torch.long), list_k=2)
    assert s["rank_under_base"].tolist() == [1, 3, 4, 3]
    assert s["rl_token"].tolist() == [2, 0, 3, 0]
    assert [classify(r, 2) for r in [1, 2, 3]] == ["unshifted", "reranked", "shifted"]
    # KL(p || p) = 0 and a -inf logit in the base contributes nothing (no NaN)
    b = torch.tensor([[0.0, 1.0, float("-inf")]])
    s = chunk_pair_stats(b, b.clone(), torch.zeros(1, dtype=torch.long), list_k=2)
    assert s["kl"].item() == 0.0 and math.isfinite(s["base_entropy"].item())


def test_summarize_pure_edge_cases():
    empty = summarize([], top_k=5)
    assert empty["n_tokens"] == 0 and empty["unshifted_frac"] is None and empty["entropy_mean_all"] is None
    json.dumps(empty, allow_nan=False)
    def row(rank, h, correct=None, s=0):
        return {
            "prompt_index": 0, "sample_id": s, "rank_under_base": rank, "base_entropy": h, "rl_entropy": h,
            "kl_base_rl": 0.1, "correct": correct}
    rows = [row(1, 0.1 * i) for i in range(19)] + [row(7, 5.0)]
    s = summarize(rows, top_k=5)
    assert s["shifted_frac"] == 1 / 20 and s["reranked_frac"] == 0.0
    assert s["topk_containment"]["5"] == 0.0 and s["topk_containment"]["7"] == 1.0
    assert s["top_entropy_decile_threshold"] == pytest.approx(1.8)  # m = 2: the 2nd largest
    assert s["disagreement_in_top_entropy_decile"] == 1.0
    assert "by_correctness" not in s
    s = summarize([row(1, 1.0, True, 0), row(2, 2.0, False, 1)], top_k=5)
    assert s["by_correctness"]["correct"]["n_disagreement"] == 0
    assert s["by_correctness"]["correct"]["mean_rank_at_disagreement"] is None
    assert s["by_correctness"]["incorrect"]["mean_rank_at_disagreement"] == 2.0
    json.dumps(s, allow_nan=False)


def test_default_verifier():
    def v(ans, text):
        return default_verifier({"answer": ans}, text)
    assert v("123", "d1:5+8=13;d2:...;A=123")
    assert v("1234", "so the total is 1,234.")
    assert v("42", "the answer is 42.0\n")
    assert v("Paris", "Let me think.\nparis\n\n")
    assert not v("5", "x=5 then y=6")
    assert not v("7", "")
    assert normalise(" $1,000.50 ") == "1000.5" and normalise("-0") == "0"


# ----------------------------------------------------------------------------------------------
# responses from a file, generation options
# ----------------------------------------------------------------------------------------------


def test_responses_file(policies, tmp_path):
    base, rl = policies["llama"]
    resp = _write_jsonl(tmp_path / "r.jsonl", [
        {"id": "p12", "response": "3"},
        {"prompt": "3+4=", "response": "7;A=7"},
        {"id": "p12", "response": "4", "finished": False},
    ])
    summary = run_diff(base, rl, PROMPTS, responses=str(resp), out_dir=tmp_path / "out")
    rows = _read_jsonl(tmp_path / "out" / "tokens.jsonl")
    got = {}
    for r in rows:
        got.setdefault((r["prompt_id"], r["sample_id"]), []).append(r["token_id"])
    eos = base.tokenizer.eos_token_id
    assert got == {("p12", 0): base.encode_response("3"), ("p12", 1): base.encode_response("4", add_eos=False),
                   ("p34", 0): base.encode_response("7;A=7")}
    assert got[("p12", 0)][-1] == eos
    assert summary["responses"] == "file" and summary["decoding"] is None
    assert summary["n_truncated"] == 1
    meta = _read_jsonl(tmp_path / "out" / "responses.jsonl")
    assert [m["correct"] for m in meta] == [True, False, True]  # default verifier: last number


def test_responses_file_errors(tmp_path):
    prompts = load_prompts(_write_jsonl(tmp_path / "p.jsonl", PROMPTS))
    bad = _write_jsonl(tmp_path / "r.jsonl", [{"id": "p12", "response": "x"}, {"id": "nope", "response": "y"}])
    with pytest.raises(DataError, match=r"line 2: id 'nope' is not in the prompts file"):
        load_responses(bad, prompts)
    bad = _write_jsonl(tmp_path / "r2.jsonl", [{"response": "x"}])
    with pytest.raises(DataError, match="line 1: give \"id\" \\(or \"prompt_id\"\\) or \"prompt\""):
        load_responses(bad, prompts)


def test_sampling_is_seeded_and_recorded(policies):
    base, rl = policies["gpt2"]
    kw = dict(responses="base-sample", n=3, temperature=0.8, top_p=0.9, max_new_tokens=10, seed=5)
    a = run_diff(base, rl, PROMPTS[:3], **kw)
    b = run_diff(base, rl, PROMPTS[:3], **kw)
    assert a == b
    assert a["n_responses"] == 9
    assert a["decoding"] == {"generator": "base", "greedy": False, "temperature": 0.8, "top_p": 0.9, "n": 3,
                             "max_new_tokens": 10, "seed": 5, "block_size": 16}


def test_option_errors(policies):
    base, rl = policies["llama"]
    with pytest.raises(ConfigError, match="--n > 1"):
        run_diff(base, rl, PROMPTS, n=2)
    with pytest.raises(ConfigError, match="neither"):
        run_diff(base, rl, PROMPTS, responses="no-such-file.jsonl")
    with pytest.raises(ConfigError, match="--top-k"):
        run_diff(base, rl, PROMPTS, top_k=0)


# ----------------------------------------------------------------------------------------------
# input errors
# ----------------------------------------------------------------------------------------------


def test_prompt_file_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="is empty"):
        load_prompts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 3: not valid JSON"):
        load_prompts(bad)
    bad.write_text('{"prompt": "a"}\n{"answer": "1"}\n')
    with pytest.raises(DataError, match=r"line 2: missing the required \"prompt\""):
        load_prompts(bad)
    bad.write_text('{"prompt": 5}\n')
    with pytest.raises(DataError, match=r"line 1: \"prompt\" must be a string"):
        load_prompts(bad)
    bad.write_text('[1, 2]\n')
    with pytest.raises(DataError, match=r"line 1: expected a JSON object"):
        load_prompts(bad)
    bad.write_text('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": "1"}\n')
    with pytest.raises(DataError, match=r"line 2: id '1' was already used on line 1"):
        load_prompts(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"prompt": "a", "answer": 3}\n\n{"prompt": "b", "id": 7}\n')
    assert load_prompts(ok) == [{"id": "L1", "prompt": "a", "answer": "3", "line": 1},
                                {"id": "7", "prompt": "b", "answer": None, "line": 3}]


def test_prompt_longer_than_context(policies):
    base, rl = policies["llama"]
    with pytest.raises(DataError, match=r"prompt 'long' is 120 tokens.*context of 96"):
        run_diff(base, rl, [{"prompt": "a" * 120, "id": "long"}])
    with pytest.raises(DataError, match=r"--max-new-tokens 64 it exceeds the context"):
        run_diff(base, rl, [{"prompt": "a" * 40, "id": "mid"}], max_new_tokens=64)


def test_tokenizer_mismatch(dirs, tmp_path, tok):
    other = build_char_tokenizer("abcdefghijXYZ")
    model = _llama(other, 0)
    model.save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    base = Policy.load(dirs["llama"][0])
    with pytest.raises(ModelLoadError, match=r"token id \d+ is .* in base .* but .* in RL"):
        run_diff(base, Policy.load(tmp_path / "other"), PROMPTS)
    # same vocabulary, different special tokens
    t2 = build_char_tokenizer(ALPHABET)
    t2.eos_token = ";"
    with pytest.raises(ModelLoadError, match="eos_token"):
        check_tokenizers_match(tok, t2)
    check_tokenizers_match(tok, build_char_tokenizer(ALPHABET))


def test_cli_errors_exit_2_without_traceback(dirs, tmp_path, capsys):
    base, rl = dirs["llama"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n{"prompt": \n')
    assert main(["diff", "--base", str(base), "--rl", str(rl), "--prompts", str(bad), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "line 2: not valid JSON" in err and "Traceback" not in err
    good = _write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    assert main(["diff", "--base", str(base), "--rl", str(tmp_path / "nope"), "--prompts", str(good)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_end_to_end(dirs, tmp_path, capsys):
    base, rl = dirs["gpt2"]
    prompts = _write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "out"
    assert main(["diff", "--base", str(base), "--rl", str(rl), "--prompts", str(prompts), "--out", str(out),
                 "--max-new-tokens", "16", "--top-k", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "unshifted" in printed and str(out / "report.html") in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["top_k"] == 4 and summary["n_prompts"] == len(PROMPTS)
    assert set(summary["files"]) == {"tokens", "responses", "summary", "report"}
    rows = _read_jsonl(out / "tokens.jsonl")
    required = {"prompt_id", "sample_id", "position", "token_id", "token_text", "rank_under_base", "base_logprob",
                "rl_logprob", "base_entropy", "rl_entropy", "kl_base_rl", "class", "base_topk_ids",
                "base_topk_texts", "base_topk_logprobs", "rl_topk_ids", "rl_topk_texts", "rl_topk_logprobs"}
    assert required <= set(rows[0])


def test_tokens_format_is_jsonl_whatever_is_installed(policies, tmp_path):
    base, rl = policies["llama"]
    run_diff(base, rl, PROMPTS[:2], max_new_tokens=8, out_dir=tmp_path)
    assert (tmp_path / "tokens.jsonl").is_file() and not (tmp_path / "tokens.parquet").exists()


def test_parquet_on_request(policies, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    base, rl = policies["llama"]
    run_diff(base, rl, PROMPTS[:2], max_new_tokens=8, out_dir=tmp_path, tokens_format="parquet")
    jsonl_dir = tmp_path / "j"
    run_diff(base, rl, PROMPTS[:2], max_new_tokens=8, out_dir=jsonl_dir)
    rows = [json.loads(line) for line in (jsonl_dir / "tokens.jsonl").read_text().splitlines()]
    table = pq.read_table(tmp_path / "tokens.parquet").to_pylist()
    assert len(table) == len(rows) > 0
    assert [r["token_id"] for r in table] == [r["token_id"] for r in rows]


def test_parquet_without_pyarrow_is_a_clear_error(policies, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    base, rl = policies["llama"]
    with pytest.raises(ConfigError, match="needs pyarrow"):
        run_diff(base, rl, PROMPTS[:2], max_new_tokens=8, out_dir=tmp_path, tokens_format="parquet")
    assert not any(tmp_path.iterdir())


def test_progress_bars_do_not_break(policies, capsys):
    base, rl = policies["llama"]
    s = run_diff(base, rl, PROMPTS[:2], max_new_tokens=6, progress=True)
    assert s["n_responses"] == 2
    assert "scoring" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------


def _fake_row(pos, text, cls="reranked", rank=3):
    return {"prompt_id": "x", "prompt_index": 0, "sample_id": 0, "position": pos, "token_id": pos,
            "token_text": text, "rl_token_id": pos, "rl_token_text": text, "rank_under_base": rank, "class": cls,
            "base_logprob": -1.0, "rl_logprob": -0.1, "base_logprob_token": -1.0, "rl_logprob_token": -0.1,
            "base_entropy": 1.0 + pos, "rl_entropy": 0.5, "kl_base_rl": 0.2,
            "base_topk_ids": [1, 2, 3, 4, 5], "base_topk_texts": ["<", "&", '"', " ", "\n"],
            "base_topk_logprobs": [-0.5, -1, -2, -3, -4], "rl_topk_ids": [5, 4, 3, 2, 1],
            "rl_topk_texts": ["</script>", "'", "\t", "", "\u200b"], "rl_topk_logprobs": [-0.1, -2, -3, -4, -5],
            "correct": None}


def test_html_escapes_token_text():
    texts = ["<script>alert(1)</script>", "&amp;", '"', "'", " ", "\n", "", "\t", "</script><b>"]
    rows = [_fake_row(i, t) for i, t in enumerate(texts)]
    summary = summarize(rows, top_k=5) | {"top_k": 5, "base_model": "<b>m</b>", "rl_model": "r&d"}
    meta = [{"prompt_id": "<x>", "prompt_index": 0, "sample_id": 0, "prompt": "<p>&\"", "answer": None,
             "response": "", "n_tokens": len(rows), "finished": True, "correct": None}]
    page = render_diff_report(summary, rows, meta)
    assert "<script>alert" not in page and "</script><b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;amp;" in page and "&lt;b&gt;m&lt;/b&gt;" in page and "r&amp;d" in page
    assert "␣" in page and "↵" in page and "∅" in page and "⇥" in page
    assert page.count("<script") == 2  # the JSON data block and the inline JS, nothing else
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    data = re.search(r'<script type="application/json" id="forklens-data">(.*?)</script>', page, re.DOTALL).group(1)
    tokens = json.loads(data)["tokens"]
    assert [t["t"] for t in tokens] == [visible_text(t) for t in texts]
    assert tokens[0]["l"][0][0] == "</script>" and tokens[0]["l"][4][0] == "⟨U+200B⟩"
    assert visible_text("a b\nc") == "a␣b↵c"


# ----------------------------------------------------------------------------------------------
# several processes
# ----------------------------------------------------------------------------------------------


def _assert_close(a, b, path="$"):
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.distributed
def test_two_processes_equal_one(dirs, tmp_path):
    base, rl = dirs["llama"]
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"{i}+{i % 3}=", "answer": str(i + i % 3), "id": f"q{i}"}
                                                  for i in range(10)])
    common = ["diff", "--base", str(base), "--rl", str(rl), "--prompts", str(prompts), "--responses", "rl-sample",
              "--num-samples", "2", "--max-new-tokens", "12", "--block-size", "3", "--seed", "3", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "forklens.cli", *common, "--out", str(tmp_path / "two")],
                          check=False, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote:") == 1  # only rank 0 reports
    one, two = tmp_path / "one", tmp_path / "two"
    _assert_close(json.loads((one / "summary.json").read_text()), json.loads((two / "summary.json").read_text()))
    _assert_close(_read_jsonl(one / "tokens.jsonl"), _read_jsonl(two / "tokens.jsonl"))
    assert _read_jsonl(one / "responses.jsonl") == _read_jsonl(two / "responses.jsonl")
    assert (two / "report.html").is_file()


def test_tokenizer_override_when_rl_changed_a_special_token(dirs, tmp_path, capsys):
    """An RL checkpoint saved with a changed special token is refused; --tokenizer loads one for both."""
    import shutil

    base, rl = dirs["llama"]
    changed = tmp_path / "rl-changed"
    shutil.copytree(rl, changed)
    t2 = build_char_tokenizer(ALPHABET)
    t2.eos_token = ";"
    t2.save_pretrained(changed)
    prompts = _write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    args = ["diff", "--base", str(base), "--rl", str(changed), "--prompts", str(prompts), "--max-new-tokens", "4",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "eos_token" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--tokenizer", str(base)]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["n_prompts"] == 2
