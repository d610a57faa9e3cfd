"""forklens's recurrent / PrefixLM model class and HF's Mamba: the same sampling, scoring, training, evaluation
and diff paths as the Llama organisms (greedy-vs-generate and score-vs-logits are in tests/test_policy.py)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from forklens.cli import main
from forklens.models import RecurrentLMConfig, RecurrentLMForCausalLM
from forklens.models.recurrent import attention_mask_4d
from forklens.policy import Policy
from forklens.policy.fast_decode import fast_decode_supported
from forklens.tasks.arith import ArithTask
from tests.conftest import make_tiny

ARCHS = ["recurrent", "recurrent-prefix", "transformer-prefix", "mamba"]


def _full_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("arch", ["recurrent-prefix", "transformer-prefix"])
def test_cached_decoding_equals_the_full_prefix_lm_forward(arch):
    model, tok = make_tiny(arch, seed=2)
    policy = Policy(model, tok)
    prompts = ["347+485=", "1+2=", "99+1="]  # left-padded in one batch
    s = policy.sample(prompts, n=1, temperature=0, max_new_tokens=10)
    for p, r in zip(s.prompt_ids, s.response_ids):
        logits = _full_logits(model, p + r)
        assert logits[len(p) - 1:len(p) + len(r) - 1].argmax(-1).tolist() == r


@pytest.mark.parametrize("prefix", [False, True])
def test_prefix_lm_attends_both_ways_over_the_prompt_only(prefix):
    model, tok = make_tiny("recurrent-prefix" if prefix else "recurrent", seed=1)
    a = tok("12+34=5;6", add_special_tokens=False)["input_ids"]
    b = list(a)
    b[3] = tok.convert_tokens_to_ids("9")  # a later prompt token (position 3 of the prompt "12+34=")
    c = list(a)
    c[7] = tok.convert_tokens_to_ids("9")  # a response token
    la, lb, lc = _full_logits(model, a), _full_logits(model, b), _full_logits(model, c)
    assert torch.allclose(la[:3], lb[:3]) != prefix  # earlier prompt positions see it only under PrefixLM
    assert torch.allclose(la[:7], lc[:7])  # never a response token
    assert not torch.allclose(la[7:], lc[7:])


def test_attention_mask_rows():
    ids = torch.tensor([[0, 5, 7, 9, 5, 9]])  # pad, then a prompt closed by token 9, then a response
    valid = torch.tensor([[0, 1, 1, 1, 1, 1]])
    m = attention_mask_4d(ids, valid, 0, 9)[0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0],   # a padding query sees only itself
                 [0, 1, 1, 1, 0, 0],   # prompt tokens see the whole prompt (to the first 9)
                 [0, 1, 1, 1, 0, 0],
                 [0, 1, 1, 1, 0, 0],
                 [0, 1, 1, 1, 1, 0],   # response: causal
                 [0, 1, 1, 1, 1, 1]]
    causal = attention_mask_4d(ids, valid, 0, None)[0].int()
    assert torch.equal(causal, torch.tril(torch.ones(6, 6, dtype=torch.int)) * valid[0] | torch.eye(6, dtype=torch.int))
    step = attention_mask_4d(ids[:, -1:], valid, 5, 9)[0].int().tolist()  # a cached step: causal
    assert step == [[0, 1, 1, 1, 1, 1]]


def test_truncated_backprop_reaches_only_the_last_applications():
    cfg = RecurrentLMConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_attention_heads=2, h_cycles=2,
                            l_cycles=2)
    assert cfg.schedule() == ["L", "L", "H", "L", "L", "H"] and cfg.num_hidden_layers == 6
    torch.manual_seed(0)
    model = RecurrentLMForCausalLM(cfg).train()
    ids = torch.randint(0, 12, (2, 7))

    def grads(bptt):
        model.zero_grad()
        model.model.bptt_steps = bptt
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: (p.grad is not None and float(p.grad.abs().sum()) > 0) for n, p in model.named_parameters()}

    one, two, full = grads(1), grads(2), grads(0)
    assert not any(v for n, v in one.items() if ".l_module." in n) and one["model.h_module.norm.weight"]
    assert one["model.embed_tokens.weight"] is False  # only the final H step: the input is injected at L steps
    assert all(v for n, v in two.items() if ".l_module." in n) and two["model.embed_tokens.weight"]
    assert all(full.values())
    model.eval()
    model.model.bptt_steps = 1
    a = model(input_ids=ids).logits
    model.model.bptt_steps = 0
    assert torch.equal(a, model(input_ids=ids).logits)  # truncation changes training only


def test_depth_one_control_has_the_same_parameters():
    base = dict(vocab_size=12, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    deep = RecurrentLMForCausalLM(RecurrentLMConfig(**base, h_cycles=2, l_cycles=3))
    flat = RecurrentLMForCausalLM(RecurrentLMConfig(**base, h_cycles=1, l_cycles=1))
    assert deep.num_parameters() == flat.num_parameters()
    assert deep.config.applications == 8 and flat.config.applications == 2


@pytest.mark.parametrize("bad, message", [
    (dict(architecture="mlp"), "architecture"),
    (dict(hidden_size=30, num_attention_heads=4), "multiple"),
    (dict(h_cycles=0), ">= 1"),
    (dict(prefix_lm=True), "prompt_end_token_id"),
])
def test_bad_configs_fail_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        RecurrentLMConfig(**bad)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for arch in ARCHS:
        model, tok = make_tiny(arch, seed=4, alphabet=ArithTask.alphabet, max_pos=64)
        d = tmp_path_factory.mktemp(arch)
        model.save_pretrained(str(d))
        tok.save_pretrained(str(d))
        out[arch] = (d, model)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_round_trip(arch, saved):
    d, model = saved[arch]
    assert not fast_decode_supported(model, 32)  # the sampler takes the transformers path for these
    loaded = AutoModelForCausalLM.from_pretrained(str(d)).eval()
    assert type(loaded) is type(model)
    ids = [1, 5, 6, 7, 8]
    assert torch.allclose(_full_logits(loaded, ids), _full_logits(model.eval(), ids), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_train_evaluate_and_diff(arch, saved, tmp_path):
    d, _ = saved[arch]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": f"{i + 1}"}) + "\n" for i in range(8)))
    sft = tmp_path / "sft"
    assert main(["train", "sft", "--model", str(d), "--data", str(data), "--out", str(sft),
                 "--set", "train.max_steps=2"]) == 0
    grpo = tmp_path / "grpo"
    assert main(["train", "grpo", "--model", str(d), "--task", "arith", "--out", str(grpo),
                 "--set", "train.max_steps=1", "--set", "sampling.prompts_per_step=2", "--set", "sampling.group_size=2",
                 "--set", "sampling.max_new_tokens=8"]) == 0
    lines = [json.loads(x) for x in (grpo / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["step"] == 1
    ev = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(grpo / "model"), "--task", "arith", "--out", str(ev), "--set", "limit=4",
                 "--set", "max_new_tokens=8"]) == 0
    assert json.loads(ev.read_text())["n_problems"] == 4
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n"
                               for p in ArithTask().problems("test")[:3]))
    out = tmp_path / "diff"
    assert main(["diff", "--base", str(d), "--rl", str(sft / "model"), "--prompts", str(prompts),
                 "--max-new-tokens", "6", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 3 and summary["n_tokens"] > 0
    assert summary["kl_mean"] > 0  # two SFT steps moved the model
