"""`forklens train grpo --task agent` and `forklens evaluate --task agent` run real multi-turn episodes:
the task owns its rollout, so the tool environment appends observations (tags["env_mask"]) that the
model conditions on but is not trained on."""

import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forklens.cli import main
from forklens.organisms.base import build_char_tokenizer
from forklens.tasks.agent import AgentTask
from forklens.train.sources import GRPOSource


def scripted_agent_model(tmp_path):
    """A Llama whose layer is the identity (zero output projections) and whose embeddings are one-hot, so
    the next token depends only on the last one: a bigram table that writes a tool call ``?A()``, then
    (after the environment's ``=-;``) the answer ``!1``. Saved in Hugging Face format."""
    tok = build_char_tokenizer(AgentTask.alphabet)
    V, H = len(tok), 64
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    table = {">": "?", "?": "A", "A": "(", "(": ")", ";": "!", "!": "1", "1": tok.eos_token}
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for i in range(V):
            model.model.embed_tokens.weight[i, i] = 1.0
        for a, b in table.items():
            model.lm_head.weight[tok.convert_tokens_to_ids(b), tok.convert_tokens_to_ids(a)] = 3.0
    d = tmp_path / "agent-model"
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_train_grpo_task_agent_trains_on_episodes_with_tool_observations(tmp_path, monkeypatch):
    d = scripted_agent_model(tmp_path)
    batches = []
    original = GRPOSource.batch

    def spy(self, step, policy):
        batch, info = original(self, step, policy)
        batches.append((batch, info, self.last_samples))
        return batch, info

    monkeypatch.setattr(GRPOSource, "batch", spy)
    out = tmp_path / "run"
    rc = main(["train", "grpo", "--model", str(d), "--task", "agent", "--out", str(out),
               "--set", "train.max_steps=2", "--set", "train.save_every=0", "--set", "sampling.prompts_per_step=4",
               "--set", "sampling.group_size=4", "--set", "sampling.T=2", "--set", "sampling.turn_tokens=8"])
    assert rc == 0 and len(batches) == 2
    for step, (batch, info, samples) in enumerate(batches):
        env = batch.tags["env_mask"]
        assert env.shape == batch.input_ids.shape and float(env.sum()) > 0  # observations in the trained rows
        assert float((env * batch.response_mask).sum()) == 0  # ... which are never trained on
        assert samples.episodes is not None and any(e.calls for e in samples.episodes)
        if step == 0:  # the untrained script: a call, the observation, the answer
            assert all(e.text == "?A()=-;!1" and e.calls == ["?A()"] for e in samples.episodes)
        assert "tool_calls_mean" in info and "coverage_task" in info
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["tool_calls_mean"] == 1.0 and lines[1]["tool_calls_mean"] > 0
    assert (out / "model" / "config.json").is_file()


def test_evaluate_task_agent_runs_episodes(tmp_path, monkeypatch):
    d = scripted_agent_model(tmp_path)
    seen = []
    original = AgentTask.rollout

    def spy(self, *a, **k):
        s = original(self, *a, **k)
        seen.append(s)
        return s

    monkeypatch.setattr(AgentTask, "rollout", spy)
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(d), "--task", "agent", "--out", str(out), "--set", "limit=8",
               "--set", "n=2", "--set", "temperature=1.0", "--set", "T=2", "--set", "turn_tokens=8"])
    assert rc == 0 and len(seen) == 1
    samples = seen[0]
    assert len(samples.texts) == 16 and sum(sum(m) for m in samples.env_masks) > 0
    result = json.loads(out.read_text())
    assert result["n_problems"] == 8 and result["n_per_problem"] == 2
    assert all(e.text == "?A()=-;!1" for e in samples.episodes)
    assert result["tool_calls_mean"] == 1.0 and result["accuracy"] == sum(
        p.answer == "1" for p in AgentTask().problems("test")[:8]) / 8
    assert 0.0 <= result["forced_frac"] <= 1.0 and 0.0 <= result["coverage"] <= 1.0
