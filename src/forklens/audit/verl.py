"""verl configs for ``forklens audit``, and the rule for verl's legacy FSDP actor loss.

A verl run is configured by Hydra: a YAML file (``ppo_trainer.yaml`` with edits, or the
``.hydra/config.yaml`` a run writes) and/or ``key=value`` overrides on the ``main_ppo`` command
line, usually inside a shell script. :func:`load_verl_config` reads either form (a YAML mapping, or
any other text from which the dotted ``key=value`` overrides are taken, with simple ``NAME=value``
shell variables substituted) and :func:`resolve_verl_settings` picks the settings the rule needs,
each remembering the file and key it came from, or that it is verl's default.

The rule ``VERL-TOKEN-MEAN-MICRO``: verl's legacy FSDP actor (``verl/workers/actor/dp_actor.py``)
with ``loss_agg_mode: token-mean`` divides each micro-batch's summed token loss by that
micro-batch's own token count, then weights micro-batches by sample count (or 1 / accumulation
steps), and FSDP averages the ranks. The optimizer therefore sees a mean of per-micro-batch token
means, not the token mean of the mini-batch (verl issue #5625). verl's engine workers all-reduce the
mini-batch's token count first and normalise by it (from 0.7.0, opt-in with
``trainer.use_legacy_worker_impl=disable``; the default from PR #5604); PR #6067 removed the legacy
workers, first released in 0.8.0.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from packaging.version import Version

from forklens.audit.environment import ConfigFileError, Environment, read_text
from forklens.audit.findings import Finding, RuleResult
from forklens.audit.inputs import Setting, TrainingSetup

__all__ = [
    "VERL_ENGINE_GLOBAL_TOKENS_IN",
    "VERL_LEGACY_REMOVED_IN",
    "VERL_RULE",
    "VerlSettings",
    "check_verl_token_mean_accumulation",
    "load_verl_config",
    "resolve_verl_settings",
]

VERL_RULE = "VERL-TOKEN-MEAN-MICRO"
VERL_ENGINE_GLOBAL_TOKENS_IN = Version("0.7.0")  # engine workers normalise by the all-reduced token count
VERL_LEGACY_REMOVED_IN = Version("0.8.0")  # PR #6067 removed dp_actor.py / fsdp_workers.py
VERL_DEFAULT_DISABLE_FROM = Version("0.8.0.dev0")  # PR #5604: use_legacy_worker_impl defaults to disable
VERL_REFERENCES = [
    "https://github.com/verl-project/verl/issues/5625",
    "https://github.com/verl-project/verl/pull/5604",
    "https://github.com/verl-project/verl/pull/6067",
    "https://github.com/verl-project/verl/pull/5877",
]

_ACTOR = "actor_rollout_ref.actor"
# setting name -> (dotted key in the verl config, verl's default when the key is absent)
_KEYS: dict[str, tuple[str, Any]] = {
    "strategy": (f"{_ACTOR}.strategy", "fsdp"),
    "loss_agg_mode": (f"{_ACTOR}.loss_agg_mode", "token-mean"),
    "ppo_mini_batch_size": (f"{_ACTOR}.ppo_mini_batch_size", 256),
    "ppo_micro_batch_size_per_gpu": (f"{_ACTOR}.ppo_micro_batch_size_per_gpu", None),
    "ppo_micro_batch_size": (f"{_ACTOR}.ppo_micro_batch_size", None),
    "use_dynamic_bsz": (f"{_ACTOR}.use_dynamic_bsz", False),
    "ulysses_sequence_parallel_size": (f"{_ACTOR}.ulysses_sequence_parallel_size", 1),
    "rollout_n": ("actor_rollout_ref.rollout.n", 1),
    "n_gpus_per_node": ("trainer.n_gpus_per_node", 8),
    "nnodes": ("trainer.nnodes", 1),
    "use_legacy_worker_impl": ("trainer.use_legacy_worker_impl", None),
}
_INTS = ("ppo_mini_batch_size", "ppo_micro_batch_size_per_gpu", "ppo_micro_batch_size",
         "ulysses_sequence_parallel_size", "rollout_n", "n_gpus_per_node", "nnodes")
_OVERRIDE = re.compile(r"^\+{0,2}([A-Za-z_][\w-]*(?:\.[\w-]+)+)=(.*)$", re.S)
_SHELL_VAR = re.compile(r"^([A-Za-z_]\w*)=(\S*)\s*$")
_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?::-[^}]*)?\}|([A-Za-z_]\w*))")
_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


@dataclass
class VerlSettings:
    """The verl settings the rule reads; each is a :class:`Setting`, or ``None`` when unknown."""

    source: str
    strategy: Setting | None = None
    loss_agg_mode: Setting | None = None
    ppo_mini_batch_size: Setting | None = None
    ppo_micro_batch_size_per_gpu: Setting | None = None
    ppo_micro_batch_size: Setting | None = None
    use_dynamic_bsz: Setting | None = None
    ulysses_sequence_parallel_size: Setting | None = None
    rollout_n: Setting | None = None
    n_gpus_per_node: Setting | None = None
    nnodes: Setting | None = None
    use_legacy_worker_impl: Setting | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _KEYS:
            value = getattr(self, name)
            out[name] = value.to_dict() if value is not None else None
        return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[last] = value
    return out


def _overrides(text: str, path: str) -> dict[str, Any]:
    """Hydra ``a.b.c=value`` overrides found in a shell script or command line, shell variables of
    the form ``NAME=value`` (on their own line) substituted; a value still holding an unresolved
    ``$VAR`` is kept as text and reads as unknown."""
    joined = re.sub(r"\\\r?\n", " ", text)
    variables: dict[str, str] = {}
    flat: dict[str, Any] = {}
    for number, line in enumerate(joined.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _SHELL_VAR.match(stripped.removeprefix("export "))
        if match:
            variables[match[1]] = match[2].strip("\"'")
            continue
        try:
            tokens = shlex.split(stripped, comments=True)
        except ValueError as exc:
            raise ConfigFileError(f"{path}:{number}: cannot split this line into shell words ({exc})") from None
        for token in tokens:
            match = _OVERRIDE.match(token)
            if not match:
                continue
            raw = _REFERENCE.sub(lambda m: variables.get(m[1] or m[2], m[0]), match[2])
            try:
                value = yaml.safe_load(raw) if raw else None
            except yaml.YAMLError:
                value = raw
            flat[match[1]] = value
    return _nest(flat)


def load_verl_config(path: str | Path) -> dict[str, Any]:
    """A verl Hydra config as a nested mapping: a YAML file holding a mapping, or any other text
    (a launch script, a saved command line) from which ``a.b.c=value`` overrides are read."""
    text = read_text(path, "verl config", ConfigFileError)
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigFileError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, Mapping):
            raise ConfigFileError(f"{path}: expected a YAML mapping of verl settings, got {type(data).__name__}")
        return dict(data)
    found = _overrides(text, str(path))
    if not found:
        raise ConfigFileError(
            f"{path}: no verl settings found: expected a YAML file (.yaml) or a script with Hydra "
            "overrides such as actor_rollout_ref.actor.ppo_mini_batch_size=256"
        )
    return found


def _get(mapping: Mapping[str, Any], dotted: str, depth: int = 0) -> tuple[bool, Any]:
    node: Any = mapping
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, str) and depth < 5:
        match = _INTERPOLATION.match(node.strip())
        if match:
            return _get(mapping, match[1], depth + 1)
    return True, node


def resolve_verl_settings(config: Mapping[str, Any], source: str) -> VerlSettings:
    """Pick the rule's settings from a verl config; absent keys take verl's defaults (marked so).
    Values of the wrong type raise :class:`ConfigFileError` naming the file and key; a value that
    is still a shell variable or an unresolved interpolation is left unknown."""
    settings = VerlSettings(source=source)
    for name, (key, default) in _KEYS.items():
        present, value = _get(config, key)
        where = f"{source}: {key}"
        if not present:
            if default is not None:
                setattr(settings, name, Setting(default, f"{source} (no {key})", "verl default"))
            continue
        if value is None:
            continue
        if isinstance(value, str) and "$" in value:
            continue
        if name in _INTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigFileError(f"{where}: expected a positive integer, got {value!r}")
        elif name == "use_dynamic_bsz":
            if not isinstance(value, bool):
                raise ConfigFileError(f"{where}: expected true or false, got {value!r}")
        elif not isinstance(value, str):
            raise ConfigFileError(f"{where}: expected a string, got {value!r}")
        else:
            value = value.strip().lower()
        setattr(settings, name, Setting(value, where))
    return settings


def _data_parallel(v: VerlSettings) -> int | None:
    """Data-parallel ranks: GPUs / Ulysses sequence-parallel size (None when a part is unknown)."""
    if v.n_gpus_per_node is None or v.nnodes is None or v.ulysses_sequence_parallel_size is None:
        return None
    return max((v.n_gpus_per_node.value * v.nnodes.value) // v.ulysses_sequence_parallel_size.value, 1)


def _micro_batches(v: VerlSettings, dp: int | None) -> tuple[int | None, list[str]]:
    """Micro-batches per optimizer step on one GPU as the legacy actor computes them, and how."""
    if dp is None or v.ppo_mini_batch_size is None or v.rollout_n is None:
        return None, ["ppo_mini_batch_size, rollout.n or the GPU count is unknown"]
    per_gpu = v.ppo_mini_batch_size.value * v.rollout_n.value // dp
    micro = v.ppo_micro_batch_size_per_gpu
    if micro is None and v.ppo_micro_batch_size is not None:
        micro = Setting(max(v.ppo_micro_batch_size.value // dp, 1),
                        f"{v.ppo_micro_batch_size.source} / {dp} data-parallel ranks")
    text = [
        f"sequences per GPU per optimizer step = ppo_mini_batch_size * rollout.n / data-parallel ranks "
        f"= {v.ppo_mini_batch_size.value} * {v.rollout_n.value} / {dp} = {per_gpu}",
    ]
    if micro is None:
        return None, [*text, "ppo_micro_batch_size_per_gpu is unknown"]
    text.append(micro.describe())
    return max(per_gpu // micro.value, 1), text


def _legacy_in_use(v: VerlSettings, version: Version | None) -> tuple[bool | None, str]:
    impl = v.use_legacy_worker_impl
    if impl is not None:
        if impl.value not in ("auto", "enable", "disable"):
            return None, f"{impl.describe()} is not one of auto, enable, disable"
        return impl.value != "disable", impl.describe()
    if version is None:
        return None, "trainer.use_legacy_worker_impl not given and the verl version is unknown"
    default = "disable" if version >= VERL_DEFAULT_DISABLE_FROM else "auto"
    return default != "disable", f"trainer.use_legacy_worker_impl not given; verl {version} defaults to {default!r}"


def check_verl_token_mean_accumulation(env: Environment, setup: TrainingSetup) -> RuleResult:
    """verl's legacy FSDP actor with ``loss_agg_mode: token-mean`` and more than one micro-batch per
    optimizer step (accumulation, dynamic batch size or several data-parallel ranks) optimises a
    mean of per-micro-batch token means instead of the mini-batch's token mean."""
    v = setup.verl
    pkg = env.get("verl")
    if v is None:
        return RuleResult.not_applicable(VERL_RULE, "no verl config given (--verl-config)")
    version = pkg.parsed_version if pkg is not None else None
    if version is not None and version >= VERL_LEGACY_REMOVED_IN:
        return RuleResult.clear(VERL_RULE, f"verl {pkg.version} >= {VERL_LEGACY_REMOVED_IN} has no legacy FSDP actor")
    strategy = v.strategy.value if v.strategy is not None else "fsdp"
    if strategy not in ("fsdp", "fsdp2"):
        return RuleResult.not_applicable(VERL_RULE, f"actor strategy {strategy!r}: only the FSDP actor is covered")
    mode = v.loss_agg_mode
    if mode is None:
        return RuleResult.not_applicable(VERL_RULE, "actor loss_agg_mode is unknown")
    if mode.value != "token-mean":
        return RuleResult.clear(VERL_RULE, f"{mode.describe()}: sequence-level modes are weighted by sample count")
    legacy, legacy_text = _legacy_in_use(v, version)
    if legacy is False and (version is None or version >= VERL_ENGINE_GLOBAL_TOKENS_IN):
        return RuleResult.clear(VERL_RULE, f"{legacy_text}: the engine workers normalise by the global token count")
    if legacy is False:
        return RuleResult.not_applicable(
            VERL_RULE, f"{legacy_text}, but verl {version} predates the engine's global token count (not checked)"
        )
    dp = _data_parallel(v)
    count, count_text = _micro_batches(v, dp)
    dynamic = v.use_dynamic_bsz is not None and v.use_dynamic_bsz.value
    reasons = []
    if dynamic:
        reasons.append(f"{v.use_dynamic_bsz.describe()}: micro-batches are packed to a token budget")  # type: ignore[union-attr]
    if count is not None and count > 1:
        reasons.append(f"{count} micro-batches are accumulated per optimizer step")
    if dp is not None and dp > 1:
        reasons.append(f"{dp} data-parallel ranks, whose losses FSDP averages")
    if not reasons:
        if count == 1 and dp == 1:
            return RuleResult.clear(VERL_RULE, "one micro-batch on one rank per optimizer step")
        return RuleResult.not_applicable(VERL_RULE, "; ".join(count_text))

    evidence = [pkg.describe() if pkg is not None else f"verl is not in {env.source}: version unknown",
                mode.describe(), legacy_text, *count_text, *reasons]
    if version is None or legacy is None:
        severity, title = "low", "verl token-mean loss may be a mean of micro-batch means (version or worker unknown)"
        evidence.append(
            f"affected: verl < {VERL_LEGACY_REMOVED_IN} running the legacy FSDP workers "
            "(trainer.use_legacy_worker_impl auto or enable)"
        )
    else:
        severity, title = "medium", "verl's legacy FSDP actor averages per-micro-batch token means"
    finding = Finding(
        id=VERL_RULE,
        severity=severity,
        title=title,
        evidence=evidence,
        consequence=(
            "Each micro-batch's policy, entropy and KL losses are divided by that micro-batch's own "
            "response-token count, then scaled by its share of sequences (or 1 / accumulation steps), "
            "and FSDP averages the ranks. Tokens in short micro-batches therefore weigh more than "
            "tokens in long ones: the update is not the gradient of the token-mean loss the config "
            "asks for, it depends on ppo_micro_batch_size_per_gpu, dynamic packing and the GPU count, "
            "and long (often wrong) responses are under-weighted. Nothing errors or warns."
        ),
        fix=(
            f"Upgrade to verl>={VERL_LEGACY_REMOVED_IN}; on 0.7.x set trainer.use_legacy_worker_impl=disable "
            "(the engine workers normalise by the all-reduced token count of the mini-batch). Otherwise "
            "use one micro-batch per rank per optimizer step, or a sequence-level loss_agg_mode."
        ),
        references=list(VERL_REFERENCES),
    )
    return RuleResult.flagged(finding)
