"""Causal token intervention: decode with the base model, emit the RL model's argmax at gated positions.

If RL only re-ranks a few high-entropy "fork" tokens already in the base top-k, then letting the base
decode and substituting the RL model's choice *only at those forks* should recover RL's accuracy,
while the same number of substitutions at random positions should recover little
(docs/forks.md). This module runs that experiment.

Decoding (:func:`paired_decode`)
    Both models step together over the same emitted prefix, batched with left padding and a KV cache
    each (the pattern of :mod:`forklens.policy.sample`). At every step the base model proposes its own
    token (argmax at temperature 0, else a sample at ``temperature`` drawn from a seeded generator,
    exactly as :func:`forklens.policy.sample.sample_batch` draws it); where the gate fires, the RL
    model's argmax is emitted instead, and both caches are fed the emitted token. The generator is
    consumed identically whether or not the gate fires, so every gate of one seed shares its random
    numbers with plain base decoding (common random numbers), and with the gate ``off`` the output
    is token for token that of :meth:`forklens.policy.Policy.sample`.

Gates
    ``oracle``      the RL argmax differs from the base argmax and lies in the base top-5;
    ``entropy:TAU`` the base entropy (nats, full vocabulary, temperature 1) exceeds TAU; uses no
                    knowledge of where the RL model differs (RL argmax emitted there, which often
                    equals the base's own choice);
    ``random``      the control. Protocol: for each prompt and seed, the oracle run is decoded first;
                    it fired ``k`` times over a response of ``L`` tokens. Before decoding the random
                    run, ``k`` distinct step indices are drawn uniformly from ``0 .. L-1`` (seeded by
                    (seed, prompt index, draw)); the random run emits the RL argmax at exactly those
                    steps. The positions are fixed before any of the random run's tokens are known,
                    so they cannot depend on where the models disagree. If the random run ends
                    before a chosen step, that substitution does not happen (reported as fewer
                    firings). Averaged over ``--seeds`` draws, also under greedy decoding.

``+sample`` (sampled decoding only: ``oracle+sample``, ``entropy:TAU+sample``, ``random+sample``)
                    the same gate, but where it fires the emitted token is a draw from the RL model's
                    distribution (same temperature and top-p) instead of its argmax: the analogue that
                    fits a gain made by sharpening, which shows up in sampled pass@1, not in the argmax.
                    Both draws use one uniform number per step (inverse CDF of each model's
                    distribution, coupled), so the generator is consumed exactly as in plain base
                    decoding (common random numbers kept) and, where the two distributions agree, the
                    RL draw is the base's own token. ``random+sample`` takes its count per prompt from
                    the ``oracle+sample`` run if one is given, else from the one ``entropy:TAU+sample``
                    run: it is the control of that gate.
``+base`` (sampled decoding only: ``oracle+base``, ``entropy:TAU+base``, ``random+base``)
                    the same gate, but where it fires the BASE model's argmax is emitted: the twin that
                    separates RL's choice from what any argmax does under sampling (an argmax also
                    removes the base's sampling noise where it fires). The generator is consumed as in
                    plain base decoding; ``random+base`` copies its counts as ``random+sample`` does.

``substitutions_per_response`` counts gate firings (positions where the RL argmax was emitted);
``changed_per_response`` counts the firings whose token differs from the base's own choice at that
step (a firing of the oracle gate always changes the greedy token; random or entropy firings often
do not).

Accuracy: greedy decoding runs base, RL, oracle and entropy once (they are deterministic) and the
random gate once per seed; sampled decoding (``temperature > 0``) runs everything once per seed and
reports pass@1 averaged over seeds. ``gain_recovered = (acc_gate - acc_base) / (acc_rl - acc_base)``,
``None`` when ``acc_rl == acc_base``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from forklens.errors import ConfigError, DataError
from forklens.policy.sample import KVStepper, inverse_cdf_draw, left_pad, next_token, sampling_probs

ORACLE_TOP_K = 5
EMITS = ("argmax", "sample", "base")  # what a firing gate emits (Gate.emit); "+sample" / "+base" in a spec
ENTROPY_TAU_DEFAULT = 1.4  # the paper's gate for real LMs (docs/forks.md)
ENTROPY_TAU_ORGANISM = 0.5  # the arith organism: forks ~0.67 nats, digit slips <= 0.4, the rest ~0 (docs/forks.md)


@dataclass(frozen=True)
class Gate:
    """Where to substitute: ``off``, ``oracle``, ``entropy`` (with ``tau``) or ``random``; what is emitted
    there: ``emit`` = ``argmax`` (the RL model's argmax), ``sample`` (a draw from the RL model, coupled to
    the base's draw) or ``base`` (the base model's own argmax); the last two need sampled decoding."""

    kind: str
    tau: float | None = None
    emit: str = "argmax"

    def __post_init__(self):
        if self.emit not in EMITS:
            raise ConfigError(f"gate emit {self.emit!r} is not one of {', '.join(EMITS)}")

    @property
    def suffix(self) -> str:
        return "" if self.emit == "argmax" else f"+{self.emit}"

    @property
    def spec(self) -> str:
        return (f"entropy:{self.tau:g}" if self.kind == "entropy" else self.kind) + self.suffix


def parse_gate(spec: str, default_tau: float = ENTROPY_TAU_DEFAULT) -> Gate:
    """``oracle`` | ``random`` | ``entropy`` | ``entropy:TAU`` (| ``off``), each but ``off`` optionally
    followed by ``+sample`` or ``+base`` -> :class:`Gate`."""
    s = spec.strip().lower()
    for emit in EMITS[1:]:
        if s.endswith(f"+{emit}"):
            g = parse_gate(s[: -len(emit) - 1], default_tau)
            if g.kind == "off" or g.emit != "argmax":
                raise ConfigError(f"--gate {spec!r}: one modifier, on a gate that substitutes ('off' does not)")
            return Gate(g.kind, g.tau, emit=emit)
    if s in ("oracle", "random", "off"):
        return Gate(s)
    if s == "entropy":
        return Gate("entropy", float(default_tau))
    if s.startswith("entropy:"):
        raw = s.split(":", 1)[1]
        try:
            tau = float(raw)
        except ValueError:
            raise ConfigError(f"--gate {spec!r}: TAU must be a number of nats, e.g. entropy:1.4") from None
        if not math.isfinite(tau) or tau < 0:
            raise ConfigError(f"--gate {spec!r}: TAU must be a finite number >= 0")
        return Gate("entropy", tau)
    raise ConfigError(f"unknown gate {spec!r}; expected oracle, random, entropy or entropy:TAU (e.g. entropy:1.4), "
                      "optionally followed by +sample or +base")


def gate_keys(gates: Sequence[Gate]) -> dict[str, Gate]:
    """Summary keys: ``oracle``, ``random``, ``entropy`` (``entropy:TAU`` when several taus are run), each
    with ``+sample`` / ``+base`` for a gate that emits RL draws / the base's argmax."""
    n_entropy = len({g.tau for g in gates if g.kind == "entropy"})
    out: dict[str, Gate] = {}
    for g in gates:
        key = ("entropy" + g.suffix) if (g.kind == "entropy" and n_entropy == 1) else g.spec
        out.setdefault(key, g)
    return out


def random_reference(keys: dict[str, Gate], name: str) -> str:
    """The run whose firing counts the random gate ``name`` copies: ``oracle`` for ``random``; for
    ``random+M`` (M = sample or base) the ``oracle+M`` run if given, else the one ``entropy...+M`` run."""
    g = keys[name]
    if g.emit == "argmax":
        return "oracle"
    if f"oracle{g.suffix}" in keys:
        return f"oracle{g.suffix}"
    ent = [k for k, e in keys.items() if e.kind == "entropy" and e.emit == g.emit]
    if len(ent) != 1:
        raise ConfigError(f"gate random{g.suffix} copies the firing counts of oracle{g.suffix} or of one "
                          f"entropy:TAU{g.suffix} gate; got {len(ent)} such entropy gates and no oracle{g.suffix}")
    return ent[0]


# --- decoding ------------------------------------------------------------------------------------

@dataclass
class PairedDecode:
    responses: list[list[int]]  # emitted tokens, up to and including EOS
    finished: list[bool]
    fired: list[list[int]]  # step indices where the gate emitted the RL argmax
    changed: list[int]  # firings whose token differs from the base's own choice
    processed: int  # tokens run through the base model (prompt + generated); the RL model runs as many
    entropy: list[list[float]] | None = None  # base entropy at each emitted step (record_stats)
    topk_ids: list[torch.Tensor] | None = None  # [T, k] base top-k ids per step (record_stats)
    topk_logprobs: list[torch.Tensor] | None = None  # [T, k] their log-probs (temperature 1)


def _inverse_cdf(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """The token :func:`next_token` draws from ``logits`` for the uniform numbers ``u`` ([B, 1], float64)."""
    return inverse_cdf_draw(sampling_probs(logits, temperature, top_p), u)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def paired_decode(base_model, rl_model, prompts: list[list[int]], *, pad_id: int, eos_ids: list[int],
                  max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                  generator: torch.Generator | None = None, gate: Gate = Gate("off"),
                  forced_steps: Sequence[set[int]] | None = None, record_stats: int = 0) -> PairedDecode:
    """Decode one batch with ``base_model``, emitting ``rl_model``'s argmax where ``gate`` fires.

    ``forced_steps[i]`` (gate ``random``) are the step indices of row ``i`` that fire. ``rl_model`` may
    be None for gate ``off``. ``record_stats=k`` also returns the base entropy and top-k log-probs
    (temperature 1, raw logits) of every emitted step: the statistics a teacher-forced pass would give.
    """
    if gate.kind != "off" and rl_model is None:
        raise ValueError(f"gate {gate.spec} needs an RL model")
    if gate.kind == "random" and (forced_steps is None or len(forced_steps) != len(prompts)):
        raise ValueError("gate random needs forced_steps, one set per prompt")
    if gate.emit != "argmax" and temperature == 0:
        raise ValueError(f"gate {gate.spec} differs from its argmax gate only under sampling: it needs temperature > 0")
    device = next(base_model.parameters()).device
    b = len(prompts)
    input_ids, attn, position_ids = left_pad(prompts, pad_id, device)
    base = KVStepper(base_model, input_ids, attn, position_ids)
    rl = KVStepper(rl_model, input_ids, attn, position_ids) if gate.kind != "off" else None
    processed = int(attn.sum())
    eos = torch.tensor(eos_ids, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    tokens, fires, changes, ents, tids, tlps = [], [], [], [], [], []
    next_pos = position_ids[:, -1:] + 1
    for step in range(max_new_tokens):
        lb = base.logits
        if gate.emit == "sample":  # one uniform per row, as next_token draws it, shared by the base and RL draws
            u = torch.rand(b, 1, generator=generator, dtype=torch.float64, device=device)
            tok_base = _inverse_cdf(lb, temperature, top_p, u)
        else:
            tok_base = next_token(lb, temperature, top_p, generator)
        if record_stats:
            logp = torch.log_softmax(lb.float(), dim=-1)
            ents.append(-(logp.exp() * logp).sum(-1))
            v, ix = logp.topk(min(record_stats, logp.shape[-1]), dim=-1)
            tids.append(ix)
            tlps.append(v)
        if rl is None:
            fire = torch.zeros(b, dtype=torch.bool, device=device)
            tok = tok_base
        else:
            rl_logits = rl.logits
            rl_arg = rl_logits.argmax(-1)
            if gate.kind == "oracle":
                top = lb.topk(min(ORACLE_TOP_K, lb.shape[-1]), dim=-1).indices
                fire = (rl_arg != lb.argmax(-1)) & (top == rl_arg[:, None]).any(-1)
            elif gate.kind == "entropy":
                fire = _entropy(lb) > gate.tau
            elif gate.kind == "random":
                fire = torch.tensor([step in forced_steps[i] for i in range(b)], dtype=torch.bool, device=device)
            else:
                raise ValueError(f"unknown gate {gate.kind!r}")
            if gate.emit == "sample":
                rl_tok = _inverse_cdf(rl_logits, temperature, top_p, u)
            else:
                rl_tok = lb.argmax(-1) if gate.emit == "base" else rl_arg
            tok = torch.where(fire, rl_tok, tok_base)
        fire = fire & ~finished
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        fires.append(fire)
        changes.append(fire & (tok != tok_base))
        processed += int((~finished).sum())
        finished = finished | torch.isin(tok, eos)
        if bool(finished.all()) or len(tokens) == max_new_tokens:
            break
        attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=device)], dim=1)
        base.step(tok, attn, next_pos)
        if rl is not None:
            rl.step(tok, attn, next_pos)
        next_pos = next_pos + 1
    gen = torch.stack(tokens, dim=1).tolist()
    fire_m = torch.stack(fires, dim=1).tolist()
    change_m = torch.stack(changes, dim=1).tolist()
    eos_set = set(eos_ids)
    responses, done, fired, changed = [], [], [], []
    for i, row in enumerate(gen):
        out_row = []
        for t in row:
            out_row.append(t)
            if t in eos_set:
                break
        n = len(out_row)
        responses.append(out_row)
        done.append(bool(out_row) and out_row[-1] in eos_set)
        fired.append([s for s in range(n) if fire_m[i][s]])
        changed.append(sum(change_m[i][:n]))
    result = PairedDecode(responses, done, fired, changed, processed)
    if record_stats:
        e, ti, tl = torch.stack(ents, 1).cpu(), torch.stack(tids, 1).cpu(), torch.stack(tlps, 1).cpu()
        result.entropy = [e[i, :len(r)].tolist() for i, r in enumerate(responses)]
        result.topk_ids = [ti[i, :len(r)] for i, r in enumerate(responses)]
        result.topk_logprobs = [tl[i, :len(r)] for i, r in enumerate(responses)]
    return result


def decode(base_policy, rl_policy, prompt_ids: list[list[int]], *, gate: Gate = Gate("off"),
           temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 64, seed: int = 0,
           batch_size: int = 256, forced_steps: Sequence[set[int]] | None = None,
           record_stats: int = 0) -> PairedDecode:
    """:func:`paired_decode` over all prompts in batches of ``batch_size``, one generator seeded once
    (the batching and seeding of :meth:`Policy.sample` with ``n=1``)."""
    for i, p in enumerate(prompt_ids):
        if not p:
            raise DataError(f"prompt {i} is empty after tokenization")
        base_policy.check_length(len(p) + max_new_tokens, f"prompt {i} plus max_new_tokens={max_new_tokens}")
    gen = torch.Generator(device=base_policy.device).manual_seed(int(seed))
    models = [base_policy.model] + ([rl_policy.model] if rl_policy is not None else [])
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    parts: list[PairedDecode] = []
    try:
        for s in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[s:s + batch_size]
            forced = forced_steps[s:s + batch_size] if forced_steps is not None else None
            parts.append(paired_decode(base_policy.model, rl_policy.model if rl_policy is not None else None,
                                       chunk, pad_id=base_policy.pad_id, eos_ids=base_policy.eos_ids,
                                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                       generator=gen, gate=gate, forced_steps=forced, record_stats=record_stats))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    out = PairedDecode([], [], [], [], 0)
    if record_stats:
        out.entropy, out.topk_ids, out.topk_logprobs = [], [], []
    for p in parts:
        out.responses += p.responses
        out.finished += p.finished
        out.fired += p.fired
        out.changed += p.changed
        out.processed += p.processed
        if record_stats:
            out.entropy += p.entropy
            out.topk_ids += p.topk_ids
            out.topk_logprobs += p.topk_logprobs
    return out


def random_positions(oracle: PairedDecode, seed: int, draw: int) -> list[set[int]]:
    """The random-gate protocol: per prompt, as many step indices as the oracle fired, drawn uniformly
    without replacement from the steps the oracle run reached, before the random run is decoded."""
    out = []
    for i, (resp, fired) in enumerate(zip(oracle.responses, oracle.fired)):
        rng = random.Random(f"intervene-random-{seed}-{draw}-{i}")
        k = min(len(fired), len(resp))
        out.append(set(rng.sample(range(len(resp)), k)))
    return out


# --- the experiment -------------------------------------------------------------------------------

def check_same_vocab(base, rl) -> None:
    vb, vr = base.tokenizer.get_vocab(), rl.tokenizer.get_vocab()
    if vb != vr:
        only_b = len(set(vb) - set(vr))
        only_r = len(set(vr) - set(vb))
        raise DataError(
            f"the base ({base.path}) and RL ({rl.path}) tokenizers differ ({only_b} tokens only in the base, "
            f"{only_r} only in the RL model, or different ids): substituting token ids needs one vocabulary"
        )
    nb = base.model.get_output_embeddings().weight.shape[0]
    nr = rl.model.get_output_embeddings().weight.shape[0]
    if nb != nr:
        raise DataError(f"the base LM head has {nb} outputs and the RL head {nr}: they must share one vocabulary")


def run_intervention(base, rl, records: list[dict], verify: Callable[[dict, str], bool], gates: Sequence[Gate],
                     *, temperature: float = 0.0, seeds: int = 3, seed: int = 0, max_new_tokens: int = 64,
                     batch_size: int = 256, out_dir: str | Path | None = None, progress=None) -> dict:
    """Accuracy of base, RL and each gate on ``records`` (``{"id", "prompt", "answer"}``).

    ``verify(record, completion_text) -> bool``. Writes ``summary.json`` and ``responses.jsonl``
    (seed 0's responses, one line per prompt and decoder) into ``out_dir`` when given.
    """
    if not records:
        raise DataError("no prompts to decode")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {temperature}")
    for g in gates:
        if g.kind == "off":
            raise ConfigError("gate 'off' is plain base decoding, which is always run; drop it")
        if g.emit != "argmax" and temperature == 0:
            raise ConfigError(f"gate {g.spec} differs from its argmax gate only under sampling: it needs sampled "
                              "decoding (temperature > 0)")
    check_same_vocab(base, rl)
    keys = gate_keys(gates)
    refs = {k: random_reference(keys, k) for k, g in keys.items() if g.kind == "random"}
    need_oracle = "oracle" in keys or "oracle" in refs.values()
    greedy = temperature == 0
    prompt_ids = [base.encode_prompt(r["prompt"]) for r in records]
    n = len(records)
    kw = dict(temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size)

    acc: dict[str, list[float]] = {}
    subs: dict[str, list[float]] = {}
    chg: dict[str, list[float]] = {}
    seed0: dict[str, PairedDecode] = {}
    correct0: dict[str, list[bool]] = {}

    def score(name: str, res: PairedDecode, s: int) -> None:
        texts = [base.decode(r) for r in res.responses]
        ok = [bool(verify(rec, t)) for rec, t in zip(records, texts)]
        acc.setdefault(name, []).append(sum(ok) / n)
        subs.setdefault(name, []).append(sum(len(f) for f in res.fired) / n)
        chg.setdefault(name, []).append(sum(res.changed) / n)
        if name not in seed0:
            seed0[name], correct0[name] = res, ok
        if progress is not None:
            progress(name, s)

    det_runs = 1 if greedy else seeds  # deterministic decoders need one run under greedy decoding
    last: dict[str, PairedDecode] = {}  # the latest run of each gate a random gate copies counts from
    for s in range(seeds):
        dseed = seed + s
        if s < det_runs:
            score("base", decode(base, None, prompt_ids, seed=dseed, **kw), s)
            score("rl", decode(rl, None, prompt_ids, seed=dseed, **kw), s)
            for name, g in keys.items():
                if g.kind == "entropy" or (g.kind == "oracle" and name != "oracle"):
                    last[name] = decode(base, rl, prompt_ids, gate=g, seed=dseed, **kw)
                    score(name, last[name], s)
            if need_oracle:
                last["oracle"] = decode(base, rl, prompt_ids, gate=Gate("oracle"), seed=dseed, **kw)
                score("oracle", last["oracle"], s)
        for name, ref in refs.items():
            forced = random_positions(last[ref], seed, s)
            score(name, decode(base, rl, prompt_ids, gate=keys[name], forced_steps=forced, seed=dseed, **kw), s)

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    accuracy = {k: mean(v) for k, v in acc.items()}
    order = ["base", "rl"] + [f"{k}{m}" for m in ("", "+sample", "+base") for k in ("oracle", "random")
                              if f"{k}{m}" in accuracy] + \
        sorted(k for k in accuracy if k.startswith("entropy"))
    accuracy = {k: accuracy[k] for k in order}
    gap = accuracy["rl"] - accuracy["base"]
    gated = [k for k in order if k not in ("base", "rl")]
    summary = {
        "accuracy": accuracy,
        "gain_recovered": {k: ((accuracy[k] - accuracy["base"]) / gap if gap != 0 else None) for k in gated},
        "substitutions_per_response": {k: mean(subs[k]) for k in gated},
        "changed_per_response": {k: mean(chg[k]) for k in gated},
        "accuracy_per_seed": {k: acc[k] for k in order},
        "gates": {k: (keys[k].spec if k in keys else "oracle") for k in gated},
        "n_prompts": n,
        "temperature": temperature,
        "decoding": "greedy" if greedy else f"sampled at temperature {temperature:g}, pass@1 averaged over seeds",
        "seeds": seeds,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "oracle_top_k": ORACLE_TOP_K,
        "random_protocol": "per prompt and seed: k = oracle firings, k distinct step indices drawn uniformly "
                           "from the oracle response's steps before decoding",
        "random_reference": refs,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary["files"] = {"summary": "summary.json", "responses": "responses.jsonl"}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        with open(out / "responses.jsonl", "w") as f:
            for i, rec in enumerate(records):
                for name in order:
                    res = seed0[name]
                    f.write(json.dumps({"id": rec["id"], "decoder": name, "prompt": rec["prompt"],
                                        "answer": rec.get("answer"), "response": base.decode(res.responses[i]),
                                        "correct": correct0[name][i], "fired_steps": res.fired[i],
                                        "finished": res.finished[i]}) + "\n")
    return summary
