"""Offline data for fork-contrast: base rollouts labelled once, then a deterministic batch per step.

:func:`prepare_fork_data` follows the ReasonMaxxer recipe (docs/forks.md) step by step:

1. ``rollouts_per_problem`` base rollouts per problem (temperature 0.6, top-p 0.95), each labelled
   1/0 by the verifier;
2. keep problems with mixed outcomes (1 <= correct <= n-1), sort them by ``|pass_rate - 0.5|`` (ties:
   problem order) and keep the closest ``keep_problems``; then drop the longest
   ``drop_longest_frac`` of their rollouts. Ties at the cut-off length are kept, so rollouts of
   equal length (the organism's fixed-width traces) are never dropped arbitrarily [guess];
3. advantages ``A_i = (r_i - mean r) / max(pstdev r, 1e-8)`` over all rollouts of the problem
   (before the length filter, so the filter does not change the reward statistics [guess]), clipped
   to +-``adv_clip``;
4. decision tokens: response positions whose base entropy exceeds ``tau``. The entropy and the base
   top-K log-probs come from the logits the sampler already computed at each step (temperature 1,
   raw logits: what a teacher-forced pass over the same tokens gives, up to float rounding), so no
   second pass over the rollouts is needed; ``rescore=True`` teacher-forces them again instead
   (2N FLOPs per token more). Computed once from the base, never recomputed.

Ablations (``gate``): ``entropy`` (default), ``none`` (every response token is a decision token,
so the KL term is empty), ``random`` (each rollout gets as many decision tokens as the entropy gate
gave it, at uniformly random response positions, seeded). ``positive_only`` keeps the decision
tokens of rollouts with A_i > 0 only (the rest of their tokens still get the KL term).

:class:`ForkContrastSource` then serves ``batch_size`` rollouts per step, shuffled once per epoch
with the seed, and stores the per-token weights ``w_pg = B/|D|`` and ``w_kl = B/|N|`` computed over
the step's whole batch (see :mod:`forklens.objectives.fork_contrast`). Its first batch reports the
one-off sampling/scoring tokens in ``info`` so the trainer's FLOP count includes them.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field as dc_field, fields as dc_fields, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch

from forklens.analysis.evaluate import EvalConfig
from forklens.analysis.intervene import decode
from forklens import dist
from forklens.config import field
from forklens.errors import DataError
from forklens.objectives.advantages import estimate_advantages
from forklens.objectives.fork_contrast import ForkContrastLossConfig
from forklens.rollouts import Rollouts
from forklens.policy import Policy
from forklens.train.checkpoint import torch_save_atomic
from forklens.train.loop import TrainConfig
from forklens.train.lora import LoraSettings, check_lora_run
from forklens.train.run import train

Gate = Literal["entropy", "none", "random"]


class NoContrastError(DataError):
    """No sampled problem has mixed outcomes: nothing to contrast. ``sampled_tokens`` is what the
    sampling cost (prompt + generated tokens), so a caller can count the FLOPs spent finding that out."""

    def __init__(self, message: str, sampled_tokens: float):
        super().__init__(message)
        self.sampled_tokens = sampled_tokens


@dataclass
class ForkDataConfig:
    problems: int = field(64, ge=0, help="Training problems to sample rollouts for (0 = all of --data / the split).")
    rollouts_per_problem: int = field(20, ge=2, help="Base rollouts per problem (METHODS: 20).")
    temperature: float = field(0.6, ge=0, help="Sampling temperature of the base rollouts.")
    top_p: float = field(0.95, gt=0, le=1, help="Nucleus threshold of the base rollouts.")
    max_new_tokens: int = field(256, ge=1, help="Rollout length cap; rollouts that hit it are truncated.")
    keep_problems: int = field(50, ge=1, help="Keep the N mixed-outcome problems whose pass rate is closest to 0.5.")
    drop_longest_frac: float = field(0.2, ge=0, lt=1, help="Drop this fraction of the longest kept rollouts (ties kept).")
    adv_clip: float = field(2.5, gt=0, help="Clip advantages to +-this.")
    tau: float = field(1.4, ge=0, help="Decision tokens: base entropy (nats) above tau. 1.4 for real LMs (paper); "
                       "the arith organism's forks have ~0.67 nats and its digit slips <= 0.4, so its recipe uses 0.5.")
    gate: Gate = field("entropy", help="entropy (decision = entropy > tau), none (all response tokens) or random "
                       "(same count per rollout as the entropy gate, random positions).")
    positive_only: bool = field(False, help="Ablation: decision-token term only for rollouts with A > 0.")
    kl_top_k: int = field(20, ge=1, help="Base top-K log-probs stored per token for the KL term (capped at the vocabulary).")
    rescore: bool = field(False, help="Teacher-force the rollouts through the base for entropy/top-K (2N FLOPs/token) "
                          "instead of reusing the sampler's logits.")
    problems_per_step: int = field(0, ge=0, help="Serve whole problems: all kept rollouts of this many problems per step, "
                                   "so each batch's advantages sum to ~0 (0 = batch_size single rollouts).")
    batch_size: int = field(16, ge=1, help="Rollouts per optimizer step (when problems_per_step = 0).")
    sample_batch_size: int = field(256, ge=1, help="Sequences decoded together while sampling.")


@dataclass
class ForkData:
    """Everything the source needs, plus what was measured while preparing it."""

    rollouts: Rollouts  # kept rows; tags: decision (0/1), gather_ids, kl_logp; advantages; rewards; group_ids
    stats: dict = dc_field(default_factory=dict)
    sampled_tokens: float = 0.0
    scored_tokens: float = 0.0
    wall_s: float = 0.0


def advantages(rewards: Sequence[float], clip: float) -> list[float]:
    """A_i = (r_i - mean) / max(pstdev, 1e-8), clipped to +-clip."""
    adv, _ = estimate_advantages("grpo_population", torch.tensor(list(rewards), dtype=torch.float64),
                                 torch.zeros(len(rewards), dtype=torch.long), clip=clip)
    return adv.tolist()


def select_problems(correct: Sequence[Sequence[float]], keep: int) -> list[int]:
    """Indices of mixed-outcome problems, closest pass rate to 0.5 first (stable), at most ``keep``."""
    mixed = []
    for i, rs in enumerate(correct):
        c = sum(1 for r in rs if r > 0)
        if 1 <= c <= len(rs) - 1:
            mixed.append((abs(c / len(rs) - 0.5), i))
    mixed.sort()
    return [i for _, i in (mixed[:keep] if keep > 0 else mixed)]


def drop_longest(lengths: Sequence[int], frac: float) -> list[int]:
    """Indices kept after dropping the longest ``frac`` (rows strictly longer than the cut-off length;
    rows tied with the cut-off are kept)."""
    n = len(lengths)
    n_drop = int(math.floor(frac * n))
    if n_drop <= 0:
        return list(range(n))
    cutoff = sorted(lengths)[n - n_drop - 1]  # the longest length that survives
    return [i for i, L in enumerate(lengths) if L <= cutoff]


def decision_masks(entropy: Sequence[Sequence[float]], tau: float, gate: Gate, seed: int = 0) -> list[list[bool]]:
    """Per response token: decision (True) or not, for the entropy / none / random gates."""
    out = []
    for i, ent in enumerate(entropy):
        if gate == "none":
            out.append([True] * len(ent))
            continue
        mask = [e > tau for e in ent]
        if gate == "random":
            k = sum(mask)
            rng = random.Random(f"fork-random-gate-{seed}-{i}")
            pos = set(rng.sample(range(len(ent)), k))
            mask = [t in pos for t in range(len(ent))]
        elif gate != "entropy":
            raise ValueError(f"unknown gate {gate!r}; expected entropy, none or random")
        out.append(mask)
    return out


def prepare_fork_data(policy, problems: Sequence, verify: Callable[[object, str], float], config: ForkDataConfig,
                      seed: int = 0, progress=None) -> ForkData:
    """Sample, label, select and score the offline data (steps 1-4 of the module doc).

    ``problems`` are objects with ``.prompt``; ``verify(problem, completion) -> reward`` (1/0).
    """
    c = config
    if c.rollouts_per_problem < 2:
        raise DataError("fork-contrast needs at least 2 rollouts per problem to find mixed outcomes")
    t0 = time.perf_counter()
    problems = list(problems)
    if not problems:
        raise DataError("no training problems")
    if c.problems and c.problems < len(problems):
        rng = random.Random(f"fork-problems-{seed}")
        problems = [problems[i] for i in sorted(rng.sample(range(len(problems)), c.problems))]
    vocab = policy.model.get_output_embeddings().weight.shape[0]
    k = max(1, min(c.kl_top_k, vocab))
    prompt_ids = [policy.encode_prompt(p.prompt) for p in problems]
    flat = [ids for ids in prompt_ids for _ in range(c.rollouts_per_problem)]
    res = decode(policy, None, flat, temperature=c.temperature, top_p=c.top_p, max_new_tokens=c.max_new_tokens,
                 seed=seed, batch_size=c.sample_batch_size, record_stats=0 if c.rescore else k)
    if progress is not None:
        progress(f"sampled {len(flat)} rollouts")
    n = c.rollouts_per_problem
    texts = [policy.decode(r) for r in res.responses]
    rewards = [float(verify(problems[j // n], texts[j])) for j in range(len(flat))]
    per_problem = [rewards[i * n:(i + 1) * n] for i in range(len(problems))]
    kept_problems = select_problems(per_problem, c.keep_problems)
    if not kept_problems:
        raise NoContrastError(f"none of the {len(problems)} problems has mixed outcomes over {n} rollouts "
                              "(all right or all wrong): nothing to contrast; sample more problems or rollouts",
                              float(res.processed))
    adv_all = {i: advantages(per_problem[i], c.adv_clip) for i in kept_problems}
    rows = [i * n + j for i in kept_problems for j in range(n)]
    keep = drop_longest([len(res.responses[r]) for r in rows], c.drop_longest_frac)
    rows = [rows[x] for x in keep]
    resp = [res.responses[r] for r in rows]
    if any(len(r) == 0 for r in resp):
        raise DataError("a rollout is empty (max_new_tokens = 0?)")
    scored = 0.0
    if c.rescore:
        sc = policy.score([flat[r] for r in rows], resp, top_k=k)
        ent = [s.entropy.tolist() for s in sc]
        tids = [s.topk_ids for s in sc]
        tlps = [s.topk_logprobs for s in sc]
        scored = float(sum(len(flat[r]) + len(y) for r, y in zip(rows, resp)))
    else:
        ent = [res.entropy[r] for r in rows]
        tids = [res.topk_ids[r] for r in rows]
        tlps = [res.topk_logprobs[r] for r in rows]
    adv = [adv_all[r // n][r % n] for r in rows]
    dec = decision_masks(ent, c.tau, c.gate, seed)
    if c.positive_only:
        dec = [m if a > 0 else [False] * len(m) for m, a in zip(dec, adv)]
    batch = Rollouts.from_ids([flat[r] for r in rows], resp, policy.pad_id,
                              rewards=torch.tensor([rewards[r] for r in rows]),
                              advantages=torch.tensor(adv, dtype=torch.float32),
                              group_ids=torch.tensor([r // n for r in rows], dtype=torch.long),
                              truncated=torch.tensor([not res.finished[r] for r in rows]))
    shape = batch.input_ids.shape
    decision = torch.zeros(shape, dtype=torch.float32)
    gather_ids = torch.zeros((*shape, k), dtype=torch.int32)
    kl_logp = torch.zeros((*shape, k), dtype=torch.float32)
    entropy = torch.zeros(shape, dtype=torch.float32)
    for b, r in enumerate(rows):
        s = len(flat[r])
        t = len(resp[b])
        decision[b, s:s + t] = torch.tensor(dec[b], dtype=torch.float32)
        entropy[b, s:s + t] = torch.tensor(ent[b], dtype=torch.float32)
        gather_ids[b, s:s + t] = tids[b][:t].to(torch.int32)
        kl_logp[b, s:s + t] = tlps[b][:t].float()
    batch.tags = {"decision": decision, "base_entropy": entropy, "gather_ids": gather_ids, "kl_logp": kl_logp}
    all_ent = [e for row in ent for e in row]
    n_tok = len(all_ent)
    n_dec = int(decision.sum())
    entropy_gate_count = sum(e > c.tau for e in all_ent)
    hist_edges = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.4, 2.0, float("inf")]
    hist = [sum(1 for e in all_ent if lo <= e < hi) for lo, hi in zip(hist_edges[:-1], hist_edges[1:])]
    stats = {
        "problems_sampled": len(problems),
        "rollouts_sampled": len(flat),
        "sampled_pass_rate": sum(rewards) / len(rewards),
        "problems_mixed": len(select_problems(per_problem, 0)),
        "problems_kept": len(kept_problems),
        "rollouts_kept": len(rows),
        "kept_pass_rate": sum(rewards[r] for r in rows) / len(rows),
        "response_tokens": n_tok,
        "decision_tokens": n_dec,
        "decision_frac": n_dec / max(n_tok, 1),
        "entropy_gate_tokens": entropy_gate_count,
        "entropy_mean": sum(all_ent) / max(n_tok, 1),
        "entropy_histogram": {"edges": [e if math.isfinite(e) else None for e in hist_edges], "counts": hist},
        "gate": c.gate, "tau": c.tau, "positive_only": c.positive_only, "kl_top_k": k,
        "stats_from": "rescore" if c.rescore else "sampler logits",
    }
    return ForkData(rollouts=batch, stats=stats, sampled_tokens=float(res.processed), scored_tokens=scored,
                    wall_s=time.perf_counter() - t0)


def step_weights(batch: Rollouts) -> dict[str, torch.Tensor]:
    """``w_pg = B/|D|`` at decision tokens, ``w_kl = B/|N|`` at the other response tokens, over ``batch``."""
    resp = batch.response_mask
    dec = batch.tags["decision"] * resp
    non = resp * (1 - batch.tags["decision"])
    b = float(len(batch))
    n_d, n_n = float(dec.sum()), float(non.sum())
    w_pg = dec * (b / n_d) if n_d > 0 else torch.zeros_like(dec)
    w_kl = non * (b / n_n) if n_n > 0 else torch.zeros_like(non)
    return {"w_pg": w_pg, "w_kl": w_kl}


class ForkContrastSource:
    """Serves the prepared rollouts, reshuffled each epoch (deterministic in seed and step): either
    ``batch_size`` single rollouts per step, or (``problems_per_step > 0``) all kept rollouts of that
    many problems, so that every batch holds whole groups whose advantages sum to about zero."""

    def __init__(self, data: ForkData, batch_size: int, seed: int = 0, problems_per_step: int = 0):
        if len(data.rollouts) == 0:
            raise DataError("the fork-contrast dataset is empty: nothing to train on")
        self.data = data
        self.batch_size = batch_size
        self.problems_per_step = problems_per_step
        self.seed = seed
        groups: dict[int, list[int]] = {}
        gids = data.rollouts.group_ids.tolist() if data.rollouts.group_ids is not None else range(len(data.rollouts))
        for row, g in enumerate(gids):
            groups.setdefault(int(g), []).append(row)
        self.groups = [groups[g] for g in sorted(groups)]
        self.n_units = len(self.groups) if problems_per_step > 0 else len(data.rollouts)
        self.per_step = problems_per_step if problems_per_step > 0 else batch_size

    def rows(self, step: int) -> list[int]:
        out = []
        for k in range(step * self.per_step, (step + 1) * self.per_step):
            epoch, i = divmod(k, self.n_units)
            perm = list(range(self.n_units))
            random.Random(f"fork-{self.seed}-epoch-{epoch}").shuffle(perm)
            if self.problems_per_step > 0:
                out.extend(self.groups[perm[i]])
            else:
                out.append(perm[i])
        return out

    def batch(self, step: int, policy=None) -> tuple[Rollouts, dict[str, float]]:
        full = self.data.rollouts.select(self.rows(step))
        full.tags = {**full.tags, **step_weights(full)}
        rank, world = dist.rank(), dist.world_size()
        batch = full.select(list(range(rank, len(full), world))) if world > 1 else full
        dec = full.tags["decision"] * full.response_mask
        info = {"decision_tokens": float(dec.sum()),
                "kl_tokens": float((full.response_mask - dec).sum()),
                "reward_mean": float(full.rewards.mean()),
                "epoch": step * self.per_step / self.n_units}
        if step == 0:  # the one-off cost of preparing the offline data, counted once by the trainer
            info["sampled_tokens"] = self.data.sampled_tokens / world
            info["scored_tokens"] = self.data.scored_tokens / world
        return batch, info


# --- the run -------------------------------------------------------------------------------------

def _fork_train_default() -> TrainConfig:
    return TrainConfig(max_steps=150, learning_rate=1e-4, micro_batch_size=16, max_grad_norm=1.0)


@dataclass
class ForkContrastConfig:
    train: TrainConfig = field(default_factory=_fork_train_default, help="Optimizer and loop settings.")
    data: ForkDataConfig = field(default_factory=ForkDataConfig, help="Offline rollouts, selection and gate.")
    loss: ForkContrastLossConfig = field(default_factory=ForkContrastLossConfig, help="Loss settings.")
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(enabled=True),
                               help="LoRA, r 32 / alpha 64 (lora.enabled=false: full fine-tuning).")
    eval: EvalConfig = field(default_factory=EvalConfig, help="Held-out evaluation after training (--task only).")
    evaluate: bool = field(True, help="Evaluate base and trained model on the task's test split (--task only).")


def run_fork_contrast(base_dir, problems: Sequence, verify: Callable[[object, str], float], cfg: ForkContrastConfig,
                      out_dir, seed: int = 0, resume: bool = False, progress: bool = True, log=None,
                      callbacks: list | None = None) -> dict:
    """Prepare the offline data from the model in ``base_dir``, train, save ``out_dir / 'model'``.
    ``callbacks`` go to the Trainer (e.g. a validation callback that stops at a plateau).

    Returns steps, FLOPs (one-off sampling/scoring + training, as the trainer counts them), wall time
    (preparation + training), the data statistics and the model directory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_lora_run(cfg.lora, resume=resume)
    policy = Policy.load(base_dir)
    data_file = out_dir / "fork_data.pt"
    if resume and data_file.is_file():
        try:
            blob = torch.load(str(data_file), weights_only=True)
        except Exception as exc:  # truncated file, or pickled objects that weights_only refuses
            raise DataError(f"{data_file}: cannot read the saved fork data ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0]}); start again without --resume (with --overwrite)") from None
        data = ForkData(rollouts=Rollouts(**blob["rollouts"]), stats=blob["stats"],
                        sampled_tokens=blob["sampled_tokens"], scored_tokens=blob["scored_tokens"],
                        wall_s=blob["wall_s"])
    else:
        data = prepare_fork_data(policy, problems, verify, cfg.data, seed=seed,
                                 progress=(lambda m: log(m)) if log else None)
        torch_save_atomic({"rollouts": {f.name: getattr(data.rollouts, f.name) for f in dc_fields(data.rollouts)},
                           "stats": data.stats, "sampled_tokens": data.sampled_tokens,
                           "scored_tokens": data.scored_tokens, "wall_s": data.wall_s}, data_file)
    (out_dir / "data.json").write_text(json.dumps({**data.stats, "sampled_tokens": data.sampled_tokens,
                                                   "scored_tokens": data.scored_tokens,
                                                   "prepare_wall_s": data.wall_s}, indent=2))
    if log:
        s = data.stats
        log(f"fork data: {s['problems_kept']}/{s['problems_sampled']} problems kept, {s['rollouts_kept']} rollouts, "
            f"{s['decision_tokens']} decision tokens ({100 * s['decision_frac']:.1f}% of {s['response_tokens']}, "
            f"gate {s['gate']}, tau {s['tau']:g})")
    source = ForkContrastSource(data, cfg.data.batch_size, seed=seed, problems_per_step=cfg.data.problems_per_step)
    model_dir = out_dir / "model"
    res = train(policy, "fork_contrast", cfg.loss, source, replace(cfg.train, seed=seed), out_dir,
                name="fork-contrast", progress=progress, resume=resume, callbacks=callbacks, model_dir=model_dir,
                lora=cfg.lora)
    return {"steps": res.steps, "flops": res.flops, "train_wall_s": res.wall_s,
            "prepare_wall_s": data.wall_s, "wall_s": res.wall_s + data.wall_s, "last": res.last,
            "data": data.stats, "model_dir": str(model_dir), "policy": policy,
            "config": asdict(cfg)}
