"""The multi-turn episode sampler: masks, the cap, greedy = a turn-by-turn reference, reproducibility."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from forklens.policy import Policy
from forklens.policy.episodes import episodes_to_rollouts, sample_episodes
from forklens.tasks.agent import AgentTask
from forklens.tasks.base import Problem
from forklens.organisms.base import build_char_tokenizer
from tests.conftest import make_tiny

TASK = AgentTask()


class ScriptedLM(torch.nn.Module):
    """A 'model' that writes a fixed transcript per prompt: the next character of ``scripts[prompt]``
    after the current context, EOS once the script is complete. ``scripts[prompt]`` may also be a
    list of transcripts: every continuation consistent with the context gets the same high logit, so
    sampling picks among them uniformly. The KV cache is the context itself, so the sampler's cached
    decoding path is exercised."""

    def __init__(self, tokenizer, scripts: dict[str, str]):
        super().__init__()
        self.tok = tokenizer
        self.scripts = scripts
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=128)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **_):
        ctx = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], dim=1)
        logits = torch.zeros(ctx.shape[0], 1, len(self.tok))
        for b in range(ctx.shape[0]):
            ids = ctx[b][attention_mask[b].bool()].tolist()
            text = self.tok.decode(ids, skip_special_tokens=True)
            prompt = text[: text.index(">") + 1]
            scripts, done = self.scripts[prompt], text[len(prompt):]
            scripts = [scripts] if isinstance(scripts, str) else scripts
            live = [sc for sc in scripts if sc.startswith(done)]
            assert live, (scripts, done)
            for sc in live:
                nxt = self.tok.eos_token_id if done == sc else self.tok.convert_tokens_to_ids(sc[len(done)])
                logits[b, 0, nxt] = 30.0
        return SimpleNamespace(logits=logits, past_key_values=ctx)


def scripted_policy(scripts):
    tok = build_char_tokenizer(TASK.alphabet)
    return Policy(ScriptedLM(tok, scripts), tok)


def bridge(seed=0, depth=2):
    return TASK.bridge(random.Random(seed), depth, pid=f"b{seed}")


def test_response_mask_excludes_observations_hand_checked():
    p = bridge(0, 2)
    s, (_, c1, c2) = p.meta["start"], p.meta["chain"]
    r = p.meta["relations"]
    script = f"?{r[0]}({s})={c1};?{r[1]}({c1})={c2};!{c2}"
    policy = scripted_policy({p.prompt: script})
    batch = sample_episodes(policy, TASK.environment(), [p], n=1, T=5, temperature=0)
    ep = batch.episodes[0]
    assert ep.text == script and ep.finished and not ep.forced
    assert ep.calls == [f"?{r[0]}({s})", f"?{r[1]}({c1})"]
    assert TASK.verify(p, ep.text) == 1.0
    # hand-written mask: 7 model tokens, 5 observation tokens, 7 model, 5 observation, 4 model + EOS
    own = [1] * 7 + [0] * 5 + [1] * 7 + [0] * 5 + [1] * 5
    assert [1 - m for m in ep.env_mask] == own
    ro = episodes_to_rollouts(batch, policy.pad_id)
    P = len(p.prompt)
    assert ro.response_mask[0].tolist() == [0.0] * P + [float(x) for x in own]
    assert ro.tags["env_mask"][0].tolist() == [0.0] * P + [float(1 - x) for x in own]
    assert int(ro.prompt_lens[0]) == P and not bool(ro.truncated[0])
    ids = ro.input_ids[0].tolist()
    assert policy.tokenizer.decode(ids, skip_special_tokens=True) == p.prompt + script
    assert ids[-1] == policy.tokenizer.eos_token_id
    # the observation positions hold exactly the environment's text
    env_text = policy.tokenizer.decode([t for t, m in zip(ids, ro.tags["env_mask"][0].tolist()) if m])
    assert env_text == f"={c1};={c2};"


def test_cap_forces_the_answer_and_the_marker_is_an_observation():
    p = bridge(1, 3)
    s, c = p.meta["start"], p.meta["chain"]
    r = p.meta["relations"]
    # T = 1: the script answers right after the forced marker with the entity it has
    policy = scripted_policy({p.prompt: f"?{r[0]}({s})={c[1]};!{c[1]}"})
    ep = sample_episodes(policy, TASK.environment(), [p], n=1, T=1, temperature=0).episodes[0]
    assert ep.text == f"?{r[0]}({s})={c[1]};!{c[1]}" and ep.forced and ep.finished
    assert ep.env_mask == [0] * 7 + [1] * 6 + [0] * 4  # "=xxx;!" is the environment's; EOS is the model's
    assert TASK.verify(p, ep.text) == 0.0
    # T = 0: the marker follows the prompt; the model only writes the answer
    policy = scripted_policy({p.prompt: f"!{s}"})
    ep = sample_episodes(policy, TASK.environment(), [p], n=1, T=0, temperature=0).episodes[0]
    assert ep.text == f"!{s}" and ep.env_mask == [1, 0, 0, 0, 0] and ep.calls == []


def test_a_call_after_the_cap_ends_the_episode_and_turn_cap_truncates():
    p = bridge(2, 2)
    s, c = p.meta["start"], p.meta["chain"]
    r = p.meta["relations"]
    policy = scripted_policy({p.prompt: f"?{r[0]}({s})={c[1]};!?{r[1]}({c[1]})"})
    ep = sample_episodes(policy, TASK.environment(), [p], n=1, T=1, temperature=0).episodes[0]
    assert ep.text == f"?{r[0]}({s})={c[1]};!?{r[1]}({c[1]})" and ep.finished and len(ep.calls) == 1
    # a turn longer than turn_tokens truncates the episode
    policy = scripted_policy({p.prompt: "?" + "a" * 20})
    batch = sample_episodes(policy, TASK.environment(), [p], n=2, T=3, temperature=0, turn_tokens=8)
    assert all(not e.finished and e.text == "?" + "a" * 7 for e in batch.episodes)
    assert bool(episodes_to_rollouts(batch, policy.pad_id).truncated.all())


# --------------------------------------------------------------------------- real model vs reference loop


class AnyCallEnv:
    """A permissive environment: every turn that ends with ')' is a call (observation '=<n>;'), so a
    random model makes multi-turn episodes of varied lengths."""

    stop_strings = (")",)

    def reset(self, problem, T):
        state = SimpleNamespace(T=T, calls=[], forced=T == 0)
        return state, "!" if T == 0 else ""

    def step(self, problem, state, turn_text):
        if state.forced:
            return "", True
        state.calls.append(turn_text)
        obs = f"={len(state.calls)};"
        if len(state.calls) >= state.T:
            obs += "!"
            state.forced = True
        return obs, False


def biased_policy(seed=0):
    """A random tiny Llama whose logits favour ')' and EOS, so turns end after a few tokens."""
    model, tok = make_tiny("llama", seed=seed, alphabet=TASK.alphabet, hidden=32, max_pos=96)
    bias = torch.zeros(len(tok))
    bias[tok.convert_tokens_to_ids(")")] = 0.2
    bias[tok.eos_token_id] = 0.08
    model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    return Policy(model, tok)


def reference_episode(policy, env, problem, T, turn_tokens):
    """Turn by turn with Policy.sample (greedy), one episode at a time."""
    state, opening = env.reset(problem, T)
    enc = lambda t: policy.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = policy.encode_prompt(problem.prompt)
    segs = [(enc(opening), True)] if opening else []
    stop = {policy.tokenizer.convert_tokens_to_ids(s) for s in env.stop_strings} | set(policy.eos_ids)
    while True:
        ctx = prompt + [t for ids, _ in segs for t in ids]
        if len(ctx) + turn_tokens > policy.context:
            return segs, False
        out = policy.sample([ctx], n=1, temperature=0, max_new_tokens=turn_tokens).response_ids[0]
        cut = next((i + 1 for i, t in enumerate(out) if t in stop), None)
        turn = out[:cut] if cut else out
        segs.append((turn, False))
        if cut is None:
            return segs, False
        if turn[-1] in policy.eos_ids:
            return segs, True
        obs, done = env.step(problem, state, policy.decode(turn))
        if obs:
            segs.append((enc(obs), True))
        if done:
            return segs, True


@pytest.mark.parametrize("T", [0, 1, 3])
def test_greedy_episodes_equal_turn_by_turn_reference(T):
    policy = biased_policy(seed=1)  # turns of 1-6 tokens, some truncated, 1-3 calls
    env = AnyCallEnv()
    problems = [Problem(id=str(i), prompt=pr, answer="") for i, pr in
                enumerate(["abc.A>", "qwe.B.C.D>", "^X(abc,def)>", "z.F>", "mmm.A.A.A.A>"])]
    batch = sample_episodes(policy, env, problems, n=1, T=T, temperature=0, turn_tokens=6, batch_size=3)
    lengths = set()
    for p, ep in zip(problems, batch.episodes):
        segs, finished = reference_episode(policy, AnyCallEnv(), p, T, 6)
        assert ep.segments == segs and ep.finished == finished
        lengths.add(len(segs))
    if T == 3:  # the check is only meaningful if episodes span several turns of different lengths
        assert max(lengths) >= 7 and len(lengths) > 2


def test_sampled_episodes_are_reproducible_and_respect_the_cap():
    policy = biased_policy(seed=2)
    problems = [Problem(id=str(i), prompt=f"ab{i}.A>", answer="") for i in range(4)]
    a = sample_episodes(policy, AnyCallEnv(), problems, n=6, T=2, temperature=1.0, seed=5, batch_size=7)
    b = sample_episodes(policy, AnyCallEnv(), problems, n=6, T=2, temperature=1.0, seed=5, batch_size=7)
    c = sample_episodes(policy, AnyCallEnv(), problems, n=6, T=2, temperature=1.0, seed=6, batch_size=7)
    assert [e.segments for e in a.episodes] == [e.segments for e in b.episodes]
    assert [e.segments for e in a.episodes] != [e.segments for e in c.episodes]
    assert a.group == [g for g in range(4) for _ in range(6)]
    assert all(len(e.calls) <= 2 for e in a.episodes)
    assert a.tokens_processed > 0
    ro = episodes_to_rollouts(a, policy.pad_id)
    assert torch.all(ro.response_mask * ro.tags["env_mask"] == 0)
    own = (ro.response_mask + ro.tags["env_mask"]) * ro.attention_mask
    prompt_part = torch.arange(ro.input_ids.shape[1])[None, :] < ro.prompt_lens[:, None]
    assert torch.equal(own.bool() | prompt_part, ro.attention_mask.bool())
