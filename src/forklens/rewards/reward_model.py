"""A scalar reward model r_phi(prompt, response): a feature backbone and a linear reward head.

Two backbones:

* :class:`CausalLMFeatures`: a Hugging Face causal LM's last hidden state at the last response token
  (the usual reward-model head position, as in TRL's ``AutoModelForSequenceClassification`` on a
  decoder), so any model ``Policy.load`` reads can be turned into a reward model;
* :class:`BagOfTokens`: the count of each vocabulary id among the response tokens (specials
  excluded); no parameters. With it the reward is linear in token counts, the smallest model whose
  reward can come to reward any token (the organism of ``forklens experiment fpo``).

The head is ``nn.Linear(feature_dim, 1)``; :func:`head_gradients` gives each sequence's gradient of its
reward with respect to the head's parameters (the quantity the FPO penalty of arXiv 2605.04266 is built
from, see :mod:`forklens.objectives.fpo`). :func:`reward_model_reward` wraps a reward model as a reward
function in TRL's signature.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from forklens.errors import DataError
from forklens.policy import Policy
from forklens.rewards import texts_of
from forklens.rollouts import Rollouts

HEAD_FILE = "reward_head.pt"
META_FILE = "reward_model.json"


class BagOfTokens(nn.Module):
    """Features = counts of each token id among the response tokens (``ignore_ids`` not counted)."""

    def __init__(self, vocab_size: int, ignore_ids: Sequence[int] = ()):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        keep = torch.ones(vocab_size)
        for i in ignore_ids:
            keep[i] = 0.0
        self.register_buffer("keep", keep, persistent=False)

    @property
    def feature_dim(self) -> int:
        return self.vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        one_hot = torch.nn.functional.one_hot(input_ids, self.vocab_size).float()
        return (one_hot * response_mask[..., None].float()).sum(1) * self.keep


class CausalLMFeatures(nn.Module):
    """Features = the last-layer hidden state of a causal LM at each sequence's last response token."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (positions[None] * response_mask.long()).amax(1)  # last response position of each row
        return hidden[torch.arange(len(last), device=hidden.device), last].float()


class RewardModel(nn.Module):
    """r_phi(x, y) = head(backbone(x, y)); ``policy`` gives the tokenizer (and, for a causal LM backbone,
    the model). Sequences are encoded as the policy encodes them (prompt ids + response ids + EOS)."""

    def __init__(self, policy: Policy, backbone: nn.Module, kind: str, seed: int | None = None):
        super().__init__()
        self.policy = policy
        self.backbone = backbone
        self.kind = kind
        self.head = nn.Linear(backbone.feature_dim, 1)
        if seed is not None:  # without a seed the head keeps nn.Linear's draw from the global RNG
            bound = 1.0 / math.sqrt(backbone.feature_dim)  # nn.Linear's default range, from a seeded generator
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in (self.head.weight, self.head.bias):
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))

    @classmethod
    def bag_of_tokens(cls, policy: Policy, seed: int | None = None) -> "RewardModel":
        tok = policy.tokenizer
        specials = sorted({i for i in (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id)
                           if i is not None})
        return cls(policy, BagOfTokens(len(tok), specials), "bag-of-tokens", seed=seed)

    @classmethod
    def from_causal_lm(cls, policy: Policy, seed: int | None = None) -> "RewardModel":
        """A reward head on the policy's last hidden state; ``seed`` draws the head's initial weights from
        a generator of its own (None: from torch's global RNG, as before the argument existed)."""
        return cls(policy, CausalLMFeatures(policy.model), "causal-lm", seed=seed)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def encode(self, prompts: Sequence, responses: Sequence[str]) -> Rollouts:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        p_ids = [self.policy.encode_prompt(p) for p in prompts]
        r_ids = [self.policy.encode_response(r) for r in responses]
        return Rollouts.from_ids(p_ids, r_ids, self.policy.tokenizer.pad_token_id)

    def features(self, batch: Rollouts) -> torch.Tensor:
        dev = next(self.head.parameters()).device
        return self.backbone(batch.input_ids.to(dev), batch.attention_mask.to(dev), batch.response_mask.to(dev))

    def forward(self, batch: Rollouts) -> torch.Tensor:
        """Rewards [B] of an encoded batch (differentiable in the head and, for a causal LM, the backbone)."""
        return self.head(self.features(batch)).squeeze(-1)

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        """Rewards [B] of (prompt, response) texts, without gradients."""
        with torch.no_grad():
            return self(self.encode(prompts, responses))

    def save(self, out_dir: str | Path) -> Path:
        """Write the head (and, for a causal LM backbone, nothing else: the backbone is ``policy.path``)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.head.state_dict().items()}, out / HEAD_FILE)
        meta = {"kind": self.kind, "backbone": str(self.policy.path) if self.policy.path else None,
                "feature_dim": self.backbone.feature_dim}
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        if self.kind == "causal-lm":
            self.policy.model.save_pretrained(out / "backbone")
            self.policy.tokenizer.save_pretrained(out / "backbone")
        return out

    @classmethod
    def load(cls, path: str | Path, policy: Policy | None = None) -> "RewardModel":
        """A reward model saved by :meth:`save`; a bag-of-tokens model needs the ``policy`` whose tokenizer
        it counts (its saved ``backbone`` path is used when none is given)."""
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise DataError(f"{path}: not a forklens reward model (no {META_FILE})")
        meta = json.loads((path / META_FILE).read_text())
        if meta.get("kind") == "causal-lm":
            rm = cls.from_causal_lm(policy or Policy.load(path / "backbone"))
        elif meta.get("kind") == "bag-of-tokens":
            if policy is None and not meta.get("backbone"):
                raise DataError(f"{path}: a bag-of-tokens reward model needs the policy whose tokenizer it counts")
            rm = cls.bag_of_tokens(policy or Policy.load(meta["backbone"]))
        else:
            raise DataError(f"{path}/{META_FILE}: unknown reward model kind {meta.get('kind')!r}")
        state = torch.load(path / HEAD_FILE, weights_only=True)
        if state["weight"].shape[1] != rm.backbone.feature_dim:
            raise DataError(f"{path}: head of width {state['weight'].shape[1]} for a backbone with "
                            f"{rm.backbone.feature_dim} features")
        rm.head.load_state_dict(state)
        return rm


def head_gradients(rm: RewardModel, batch: Rollouts) -> torch.Tensor:
    """Per-sequence gradient of r_phi(y) with respect to the head's parameters, flattened: [B, P].

    The backbone's features are computed once, without gradients; the per-sample gradients through the
    head are one vectorised ``torch.func`` call (one extra small gradient per sample, as in arXiv
    2605.04266)."""
    with torch.no_grad():
        feats = rm.features(batch)
    names = [n for n, _ in rm.head.named_parameters()]
    params = {n: p.detach() for n, p in rm.head.named_parameters()}

    def reward(p, f):
        return torch.func.functional_call(rm.head, p, (f[None],)).squeeze()

    grads = torch.func.vmap(torch.func.grad(reward), in_dims=(None, 0))(params, feats)
    return torch.cat([grads[n].reshape(len(feats), -1) for n in names], dim=1)


def reward_model_reward(rm: RewardModel):
    """A TRL-signature reward function: r_phi(prompt, completion) of the current ``rm``."""
    def rm_reward(prompts, completions, **_) -> list[float]:
        return [float(x) for x in rm.score(list(prompts), texts_of(completions))]
    rm_reward.__name__ = "reward_model"
    return rm_reward
