"""`forklens intervene`: paired base/RL decoding with oracle, entropy and random gates."""

import json

import pytest
import torch

from forklens.tasks.answers import is_correct
from forklens.analysis.intervene import (Gate, decode, gate_keys, parse_gate, random_positions,
                                         random_reference, run_intervention)
from forklens.cli import main
from forklens.errors import ConfigError, DataError
from forklens.policy import Policy
from tests.conftest import make_tiny

PROMPTS = ["12+34=", "7+8=", "123+456=", "9=", "55+5=", "1+1+1="]


def policies(seed_rl=2):
    base_model, tok = make_tiny("llama", seed=1)
    rl_model, _ = make_tiny("llama", seed=seed_rl)
    return Policy(base_model, tok), Policy(rl_model, tok)


def test_gate_off_reproduces_greedy_base_decoding():
    base, _ = policies()
    ids = [base.encode_prompt(p) for p in PROMPTS]
    ref = base.sample(PROMPTS, n=1, temperature=0.0, max_new_tokens=12)
    got = decode(base, None, ids, temperature=0.0, max_new_tokens=12)
    assert got.responses == ref.response_ids
    assert got.finished == ref.finished
    assert got.processed == ref.tokens_processed
    assert all(f == [] for f in got.fired)


def test_gate_off_reproduces_sampled_base_decoding():
    base, _ = policies()
    ids = [base.encode_prompt(p) for p in PROMPTS]
    ref = base.sample(PROMPTS, n=1, temperature=0.9, top_p=0.95, max_new_tokens=12, seed=7)
    got = decode(base, None, ids, temperature=0.9, top_p=0.95, max_new_tokens=12, seed=7)
    assert got.responses == ref.response_ids


def test_oracle_with_identical_models_makes_no_substitutions():
    base, _ = policies()
    same = Policy(base.model, base.tokenizer)
    ids = [base.encode_prompt(p) for p in PROMPTS]
    plain = decode(base, None, ids, max_new_tokens=12)
    res = decode(base, same, ids, gate=Gate("oracle"), max_new_tokens=12)
    assert sum(len(f) for f in res.fired) == 0
    assert res.responses == plain.responses


def test_oracle_fires_exactly_where_rl_argmax_differs_within_base_top5():
    base, rl = policies()
    ids = [base.encode_prompt(p) for p in PROMPTS]
    res = decode(base, rl, ids, gate=Gate("oracle"), max_new_tokens=12)
    sb = base.score(ids, res.responses, top_k=5)
    sr = rl.score(ids, res.responses)
    n_fired = 0
    for i, resp in enumerate(res.responses):
        for t in range(len(resp)):
            rl_arg = int(sr[i].argmax[t])
            base_arg = int(sb[i].argmax[t])
            expect = rl_arg != base_arg and rl_arg in sb[i].topk_ids[t].tolist()
            assert (t in res.fired[i]) == expect, (i, t)
            # emitted token: the RL argmax where fired, the base argmax elsewhere
            assert resp[t] == (rl_arg if expect else base_arg)
            n_fired += expect
    assert n_fired > 0  # two random models disagree somewhere: the test exercised the gate


def test_entropy_gate_fires_above_tau_only():
    base, rl = policies()
    ids = [base.encode_prompt(p) for p in PROMPTS]
    res = decode(base, rl, ids, gate=Gate("entropy", 2.8), max_new_tokens=10)
    sb = base.score(ids, res.responses)
    for i, resp in enumerate(res.responses):
        fired = {t for t in range(len(resp)) if float(sb[i].entropy[t]) > 2.8}
        assert set(res.fired[i]) == fired
    none = decode(base, rl, ids, gate=Gate("entropy", 1e9), max_new_tokens=10)
    assert none.responses == decode(base, None, ids, max_new_tokens=10).responses


def test_random_protocol_draws_oracle_count_within_reached_steps():
    base, rl = policies()
    ids = [base.encode_prompt(p) for p in PROMPTS]
    oracle = decode(base, rl, ids, gate=Gate("oracle"), max_new_tokens=12)
    pos = random_positions(oracle, seed=0, draw=0)
    for p, f, r in zip(pos, oracle.fired, oracle.responses):
        assert len(p) == len(f) and all(0 <= s < len(r) for s in p)
    assert random_positions(oracle, 0, 0) == pos  # deterministic
    res = decode(base, rl, ids, gate=Gate("random"), forced_steps=pos, max_new_tokens=12)
    for p, f in zip(pos, res.fired):
        assert set(f) <= p


def test_parse_gate_and_keys():
    assert parse_gate("oracle") == Gate("oracle")
    assert parse_gate("entropy:0.5") == Gate("entropy", 0.5)
    assert parse_gate("entropy", default_tau=0.3) == Gate("entropy", 0.3)
    for bad in ("bogus", "entropy:x", "entropy:-1"):
        with pytest.raises(ConfigError):
            parse_gate(bad)
    assert list(gate_keys([Gate("oracle"), Gate("entropy", 0.3)])) == ["oracle", "entropy"]
    assert list(gate_keys([Gate("entropy", 0.3), Gate("entropy", 1.0)])) == ["entropy:0.3", "entropy:1"]


@pytest.mark.parametrize("answer,text,ok", [
    ("832", "7+5+0=12;A=0832", True),
    ("832", "A=0833", False),
    ("1024", "the answer is 1,024.", True),
    ("-1.5", "x = -1.5", True),
    ("12", "so 112", False),
    ("Paris", "The capital is Paris.", True),
    ("Paris", "The capital is NotParis", False),
    ("yes", "", False),
])
def test_default_verify(answer, text, ok):
    assert is_correct(answer, text) is ok


def test_run_intervention_summary_layout(tmp_path):
    base, rl = policies()
    recs = [{"id": str(i), "prompt": p, "answer": "2"} for i, p in enumerate(PROMPTS)]
    # a verifier that makes the RL model's choices matter: correct iff the response has a '1'
    s = run_intervention(base, rl, recs, lambda r, t: "1" in t, [Gate("oracle"), Gate("random"), Gate("entropy", 2.5)],
                         seeds=2, max_new_tokens=8, out_dir=tmp_path)
    assert set(s["accuracy"]) == {"base", "rl", "oracle", "random", "entropy"}
    assert set(s["gain_recovered"]) == {"oracle", "random", "entropy"}
    assert set(s["substitutions_per_response"]) == {"oracle", "random", "entropy"}
    assert len(s["accuracy_per_seed"]["random"]) == 2 and len(s["accuracy_per_seed"]["oracle"]) == 1
    assert s["substitutions_per_response"]["random"] <= s["substitutions_per_response"]["oracle"] + 1e-9
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy"] == s["accuracy"]
    lines = (tmp_path / "responses.jsonl").read_text().splitlines()
    assert len(lines) == len(PROMPTS) * 5
    # identical models: gain undefined, nothing substituted
    same = Policy(base.model, base.tokenizer)
    s2 = run_intervention(base, same, recs, lambda r, t: "1" in t, [Gate("oracle")], seeds=1, max_new_tokens=8)
    assert s2["gain_recovered"]["oracle"] is None and s2["substitutions_per_response"]["oracle"] == 0


def test_cli_intervene_and_errors(tmp_path, tiny_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p, "answer": "3"}) for p in PROMPTS[:3]) + "\n")
    out = tmp_path / "out"
    args = ["intervene", "--base", str(tiny_dir), "--rl", str(tiny_dir), "--prompts", str(prompts),
            "--gate", "oracle", "--gate", "entropy:2.0", "--seeds", "1", "--max-new-tokens", "6", "--out", str(out)]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["accuracy"]) == {"base", "rl", "oracle", "entropy"}
    assert s["substitutions_per_response"]["oracle"] == 0
    # no answers -> a clear error, exit 2
    bad = tmp_path / "noanswer.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    assert main(args[:5] + ["--prompts", str(bad)]) == 2
    assert "answer" in capsys.readouterr().err
    assert main(args[:5] + ["--prompts", str(tmp_path / "missing.jsonl")]) == 2
    assert main(args + ["--gate", "sometimes"]) == 2
    assert main(args[:-2] + ["--seeds", "0", "--out", str(out)]) == 2


def test_different_vocabularies_are_rejected():
    base, _ = policies()
    other_model, other_tok = make_tiny("llama", seed=3, alphabet="abc")
    with pytest.raises(DataError, match="tokenizers differ"):
        run_intervention(base, Policy(other_model, other_tok), [{"id": "1", "prompt": "1=", "answer": "1"}],
                         lambda r, t: True, [Gate("oracle")], seeds=1, max_new_tokens=2)


def test_record_stats_match_teacher_forced_scores():
    base, _ = policies()
    ids = [base.encode_prompt(p) for p in PROMPTS]
    res = decode(base, None, ids, temperature=1.0, max_new_tokens=10, seed=3, record_stats=5)
    sc = base.score(ids, res.responses, top_k=5)
    for i in range(len(ids)):
        assert torch.allclose(torch.tensor(res.entropy[i]), sc[i].entropy, atol=1e-4)
        assert torch.equal(res.topk_ids[i], sc[i].topk_ids)
        assert torch.allclose(res.topk_logprobs[i], sc[i].topk_logprobs, atol=1e-4)


def test_sample_gates_keep_common_random_numbers_and_draw_from_the_rl_model():
    base, rl = policies()
    ids = [base.encode_prompt(p) for p in PROMPTS]
    kw = dict(temperature=1.0, max_new_tokens=10, seed=3)
    plain = decode(base, None, ids, **kw)
    # an RL model identical to the base: its coupled draw is the base's own token wherever the gate fires
    same = Policy(base.model, base.tokenizer)
    every = decode(base, same, ids, gate=Gate("entropy", 0.0, emit="sample"), **kw)
    assert every.responses == plain.responses and sum(every.changed) == 0
    assert sum(len(f) for f in every.fired) == sum(len(r) for r in plain.responses)
    # a gate that never fires consumes the generator exactly as plain base decoding does
    never = decode(base, rl, ids, gate=Gate("entropy", 1e9, emit="sample"), **kw)
    assert never.responses == plain.responses
    # a gate that always fires with the RL model emits the RL model's own sampled decoding (same uniforms)
    rl_all = decode(base, rl, ids, gate=Gate("entropy", 0.0, emit="sample"), **kw)
    assert rl_all.responses == decode(rl, None, ids, **kw).responses
    assert rl_all.responses != plain.responses and sum(rl_all.changed) > 0
    # ... whereas the argmax gate emits the RL argmax: not the RL model's sampled decoding
    assert decode(base, rl, ids, gate=Gate("entropy", 0.0), **kw).responses != rl_all.responses
    with pytest.raises(ValueError, match="temperature > 0"):
        decode(base, rl, ids, gate=Gate("oracle", emit="sample"), max_new_tokens=4)


def test_parse_sample_gates_and_random_reference():
    assert parse_gate("oracle+sample") == Gate("oracle", emit="sample")
    assert parse_gate("entropy:0.5+sample") == Gate("entropy", 0.5, emit="sample")
    assert parse_gate("entropy:0.5+sample").spec == "entropy:0.5+sample"
    with pytest.raises(ConfigError, match="off"):
        parse_gate("off+sample")
    gates = [Gate("oracle"), Gate("random"), Gate("entropy", 0.5), Gate("entropy", 0.5, emit="sample"),
             Gate("random", emit="sample")]
    keys = gate_keys(gates)
    assert list(keys) == ["oracle", "random", "entropy", "entropy+sample", "random+sample"]
    assert random_reference(keys, "random") == "oracle"
    assert random_reference(keys, "random+sample") == "entropy+sample"
    keys2 = gate_keys(gates + [Gate("oracle", emit="sample")])
    assert random_reference(keys2, "random+sample") == "oracle+sample"
    with pytest.raises(ConfigError, match="random\\+sample"):
        random_reference(gate_keys([Gate("random", emit="sample")]), "random+sample")


def test_run_intervention_sampled_with_sample_gates():
    base, rl = policies()
    recs = [{"id": str(i), "prompt": p, "answer": "2"} for i, p in enumerate(PROMPTS)]
    gates = [parse_gate(g) for g in ("oracle", "random", "entropy:2.5", "entropy:2.5+sample", "random+sample")]
    s = run_intervention(base, rl, recs, lambda r, t: "1" in t, gates, temperature=1.0, seeds=3, max_new_tokens=8)
    assert list(s["accuracy"]) == ["base", "rl", "oracle", "random", "random+sample", "entropy", "entropy+sample"]
    assert all(len(v) == 3 for v in s["accuracy_per_seed"].values())
    assert s["random_reference"] == {"random": "oracle", "random+sample": "entropy+sample"}
    # the random control fires at most as often as the gate it copies counts from
    assert s["substitutions_per_response"]["random+sample"] <= s["substitutions_per_response"]["entropy+sample"] + 1e-9
    assert s["substitutions_per_response"]["random+sample"] > 0
    # base and RL pass@1 equal plain sampled decoding with the seeds seed, seed+1, ...
    for name, pol in (("base", base), ("rl", rl)):
        per = [sum("1" in t for t in pol.sample(PROMPTS, temperature=1.0, max_new_tokens=8, seed=k).texts) / len(PROMPTS)
               for k in range(3)]
        assert s["accuracy_per_seed"][name] == pytest.approx(per, abs=1e-12)
    with pytest.raises(ConfigError, match="temperature > 0"):
        run_intervention(base, rl, recs, lambda r, t: True, [Gate("entropy", 1.0, emit="sample")], max_new_tokens=4)


def test_base_gates_emit_the_base_argmax_and_keep_common_random_numbers():
    base, rl = policies()
    ids = [base.encode_prompt(p) for p in PROMPTS]
    kw = dict(temperature=1.0, max_new_tokens=10, seed=5)
    # firing everywhere, the base's own argmax everywhere: greedy base decoding, whatever the RL model
    assert decode(base, rl, ids, gate=Gate("entropy", 0.0, emit="base"), **kw).responses == \
        decode(base, None, ids, max_new_tokens=10).responses
    assert decode(base, rl, ids, gate=Gate("entropy", 1e9, emit="base"), **kw).responses == \
        decode(base, None, ids, **kw).responses
    # the oracle's twin fires where the oracle would on its own prefix and emits the base argmax there
    res = decode(base, rl, ids, gate=Gate("oracle", emit="base"), **kw)
    sb, sr = base.score(ids, res.responses, top_k=5), rl.score(ids, res.responses)
    for i, resp in enumerate(res.responses):
        for t in res.fired[i]:
            assert int(sr[i].argmax[t]) != int(sb[i].argmax[t]) and resp[t] == int(sb[i].argmax[t])
    assert parse_gate("entropy:0.5+base") == Gate("entropy", 0.5, emit="base")
    assert parse_gate("oracle+base").spec == "oracle+base"
    for bad in ("oracle+sample+base", "off+base"):
        with pytest.raises(ConfigError):
            parse_gate(bad)
    with pytest.raises(ConfigError, match="emit"):
        Gate("oracle", emit="rl")
    keys = gate_keys([Gate("oracle"), Gate("entropy", 0.5, emit="base"), Gate("random", emit="base")])
    assert random_reference(keys, "random+base") == "entropy+base"
