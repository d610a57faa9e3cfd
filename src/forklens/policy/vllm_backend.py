"""Optional vLLM sampling backend (``--backend vllm``): rollouts and diff responses through vLLM.

vLLM is not a dependency of forklens (it needs a GPU and pins its own torch); install it next to
forklens on a GPU machine. The backend keeps the Hugging Face model as the source of truth: vLLM is
started from the policy's directory, and before each sampling call whose policy has changed (the
trainer bumps ``Policy.weights_version`` after every optimizer step) the current weights are pushed
into vLLM's model, as TRL's colocated mode does. Prompts go in as token ids and come back as token
ids, so tokenization is forklens' own on both backends.

Limits, each a clear error: a PEFT (LoRA) policy is not synced (merge the adapter first, or use the
built-in sampler). Every process, a single one too, starts its own colocated vLLM engine
(``distributed_executor_backend="external_launcher"``, as TRL's colocate mode), with its share of
``gpu_memory_utilization``; a single process gets ``RANK``/``WORLD_SIZE``/``MASTER_*`` defaults. vLLM
also returns each sampled token's log-prob, for truncated importance sampling (``loss.tis_cap``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from forklens.errors import ForklensError


def free_port() -> int:
    """A TCP port nothing listens on now (for a single process's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ForklensError(
            "the vLLM sampling backend needs vLLM, which is not installed here "
            f"({exc}); install it on a GPU machine (`pip install vllm`) or use the built-in sampler "
            "(--backend torch, the default)") from None
    return vllm


@dataclass
class VLLMOptions:
    gpu_memory_utilization: float = 0.3
    max_model_len: int | None = None
    dtype: str = "auto"
    enforce_eager: bool = False


class VLLMBackend:
    """A colocated vLLM engine that samples for one :class:`~forklens.policy.Policy`."""

    def __init__(self, policy, options: VLLMOptions | None = None):
        vllm = require_vllm()
        if policy.path is None:
            raise ForklensError("the vLLM backend starts from a model directory; this policy was not loaded "
                                "from one (use Policy.load)")
        if hasattr(policy.model, "peft_config"):
            raise ForklensError("the vLLM backend cannot sync a PEFT (LoRA) policy's weights yet; merge the "
                                "adapter into the model first, or sample with the built-in backend")
        o = options or VLLMOptions()
        kwargs = dict(model=str(policy.path), dtype=o.dtype, gpu_memory_utilization=o.gpu_memory_utilization,
                      max_model_len=o.max_model_len or policy.context, enforce_eager=o.enforce_eager,
                      seed=int(os.environ.get("RANK", 0)))
        # Colocated in this process, as TRL's colocate mode: vLLM joins the launcher's process group rather
        # than spawning workers, on one GPU too (a single process gets the rendezvous variables it needs).
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        kwargs["distributed_executor_backend"] = "external_launcher"
        self.vllm = vllm
        self.llm = vllm.LLM(**kwargs)
        self.policy = policy
        self.synced_version = getattr(policy, "weights_version", 0)

    def _model_apply(self, fn) -> None:
        if hasattr(self.llm, "apply_model"):  # vLLM >= 0.9
            self.llm.apply_model(fn)
            return
        try:
            model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            raise ForklensError(f"cannot reach the model inside vLLM {getattr(self.vllm, '__version__', '?')} "
                                "to update its weights; please report this vLLM version") from None
        fn(model)

    def sync_weights(self) -> None:
        """Push the policy's current weights into vLLM (names as in the Hugging Face checkpoint)."""
        state = [(name, t.detach()) for name, t in self.policy.model.state_dict().items()]
        self._model_apply(lambda m: m.load_weights(state))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()
        self.synced_version = getattr(self.policy, "weights_version", 0)

    def sample_ids(self, prompt_ids: list[list[int]], n: int, temperature: float, top_p: float,
                   max_new_tokens: int, seed: int) -> tuple[list[list[int]], list[bool], int]:
        """``n`` completions per prompt, in prompt order (a prompt's ``n`` completions together).
        Returns (response ids, finished flags (EOS emitted), tokens processed)."""
        if getattr(self.policy, "weights_version", 0) != self.synced_version:
            self.sync_weights()
        eos = list(self.policy.eos_ids)
        params = self.vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                          seed=int(seed), stop_token_ids=eos, ignore_eos=not eos,
                                          detokenize=False, logprobs=0)  # the sampled token's log-prob
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], sampling_params=params,
                                 use_tqdm=False)
        responses, finished, processed = [], [], 0
        self.last_logprobs = []  # per completion: vLLM's log-prob of each token (NaN where it gave none)
        eos_set = set(eos)
        for p, out in zip(prompt_ids, outs):
            if len(out.outputs) != n:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} completions for a prompt, expected {n}")
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = sampled_logprobs(ids, getattr(c, "logprobs", None))
                done = bool(ids) and ids[-1] in eos_set
                if c.finish_reason == "stop" and not done and eos:  # vLLM may drop the stop token
                    ids.append(eos[0])
                    lps.append(float("nan"))
                    done = True
                responses.append(ids)
                self.last_logprobs.append(lps)
                finished.append(done)
                processed += len(p) + len(ids)
        return responses, finished, processed


def sampled_logprobs(token_ids: list[int], logprobs) -> list[float]:
    """The log-prob vLLM gave each sampled token: ``logprobs`` is one mapping per position from token id to
    a Logprob (with ``.logprob``) or a float; NaN where a position or its token is missing."""
    out = []
    for t, tok in enumerate(token_ids):
        entry = logprobs[t] if logprobs is not None and t < len(logprobs) else None
        value = entry.get(tok) if isinstance(entry, dict) else None
        value = getattr(value, "logprob", value)
        out.append(float(value) if isinstance(value, (int, float)) else float("nan"))
    return out

