"""The audit rules: known *silent* training-stack bugs, their version bounds and their triggers.

Each rule is a pure function ``(Environment, TrainingSetup) -> RuleResult``. A rule either flags
(one :class:`Finding`), is clear (the environment or config is outside the bug's conditions) or is
not applicable (a package is absent, or a setting it needs is unknown). Version bounds are compared
with :mod:`packaging.version`, so pre-releases, dev and post releases order as PEP 440 says:
``0.19.0rc1 < 0.19.0 < 0.19.0.post1``.

Sources of every bound are in ``docs/audit.md`` and in each finding's ``references``. Where the
upstream release carrying a fix could not be established, the bound is ``None`` and the finding
says so instead of inventing a version.
"""

from __future__ import annotations

from typing import Callable

from packaging.version import Version

from forklens.audit.findings import SEVERITIES, Finding, RuleResult, severity_rank
from forklens.audit.inputs import Environment, PackageInfo, TrainingSetup
from forklens.audit.verl import VERL_RULE, check_verl_token_mean_accumulation

__all__ = [
    "DEEPSPEED_AFFECTED",
    "OPENRLHF_FIXED_IN",
    "RULES",
    "SEVERITIES",
    "TRANSFORMERS_FIXED_IN",
    "TRL_DAPO_AFFECTED_LOSS_TYPES",
    "TRL_FIXED_IN",
    "VERL_RULE",
    "Finding",
    "RuleResult",
    "check_deepspeed_offload_accumulation",
    "check_openrlhf_loss_aggregation",
    "check_transformers_accumulation_loss",
    "check_trl_dapo_normalization",
    "check_verl_token_mean_accumulation",
    "severity_rank",
]


def _ga_evidence(setup: TrainingSetup) -> str:
    ga = setup.gradient_accumulation_steps
    return ga.describe() if ga else "gradient_accumulation_steps: unknown"


# --------------------------------------------------------------------------------------------------
# 1. DeepSpeed ZeRO-1/2 CPU-offloaded optimizer drops intermediate micro-batch gradients

DS_RULE = "DS-OFFLOAD-GA-DROP"
DEEPSPEED_INTRODUCED_IN = Version("0.15.2")  # PR #6550
DEEPSPEED_FIXED_IN = Version("0.19.0")  # PR #7967
DEEPSPEED_AFFECTED = (DEEPSPEED_INTRODUCED_IN, DEEPSPEED_FIXED_IN)
DS_REFERENCES = [
    "https://github.com/deepspeedai/DeepSpeed/pull/7967",
    "https://github.com/deepspeedai/DeepSpeed/pull/6550",
    "https://github.com/deepspeedai/DeepSpeed/pull/6550#issuecomment-2419308783",
]
_OFFLOADING_DEVICES = ("cpu", "nvme")


def deepspeed_version_affected(version: Version) -> bool:
    """True for ``0.15.2 <= version < 0.19.0``."""
    return DEEPSPEED_INTRODUCED_IN <= version < DEEPSPEED_FIXED_IN


def check_deepspeed_offload_accumulation(env: Environment, setup: TrainingSetup) -> RuleResult:
    """ZeRO stage 1/2 + ``offload_optimizer.device: cpu`` + gradient accumulation on DeepSpeed
    0.15.2 <= v < 0.19.0: gradients of micro-steps 1..K-2 never reach the CPU accumulator.

    K == 2 is flagged as ``info`` (the boundary gradient g_0 + g_1 is the full sum), K > 2 as
    ``high``. An unknown version or unknown K with an otherwise affected setup gives ``low``.
    """
    pkg = env.get("deepspeed")
    if pkg is None:
        return RuleResult.not_applicable(DS_RULE, f"deepspeed is not in {env.source}")
    stage, device = setup.zero_stage, setup.offload_optimizer_device
    if stage is None:
        return RuleResult.not_applicable(DS_RULE, "no DeepSpeed ZeRO configuration given")
    if stage.value not in (1, 2):
        return RuleResult.clear(DS_RULE, f"ZeRO stage {stage.value} (only stages 1 and 2 are affected)")
    if device is None or device.value not in _OFFLOADING_DEVICES:
        shown = device.value if device else "none"
        return RuleResult.clear(DS_RULE, f"optimizer offload device is {shown!r} (only CPU offload is affected)")

    version = pkg.parsed_version
    bounds = f"affected: deepspeed >={DEEPSPEED_INTRODUCED_IN},<{DEEPSPEED_FIXED_IN}"
    if version is not None and not deepspeed_version_affected(version):
        return RuleResult.clear(DS_RULE, f"deepspeed {pkg.version} is outside the affected range ({bounds})")

    ga = setup.gradient_accumulation_steps
    if ga is not None and ga.value == 1:
        return RuleResult.clear(
            DS_RULE,
            "gradient_accumulation_steps is 1 (affected only with accumulation; see docs/audit.md for "
            "the related multi-backward() case fixed by DeepSpeed PR #7981)",
        )

    evidence = [
        f"{pkg.describe()}; {bounds}",
        stage.describe(),
        device.describe(),
        _ga_evidence(setup),
    ]
    if version is None:
        severity = "low"
        title = "DeepSpeed CPU-offloaded optimizer may drop micro-batch gradients (deepspeed version unknown)"
        evidence.append("the deepspeed version could not be determined, so the affected range cannot be ruled out")
    elif ga is None:
        severity = "low"
        title = "DeepSpeed CPU-offloaded optimizer may drop micro-batch gradients (accumulation steps unknown)"
        evidence.append(
            "gradient_accumulation_steps is not known (missing or \"auto\" with no trainer arguments); "
            "the bug triggers for any value above 1"
        )
    elif ga.value == 2:
        severity = "info"
        title = "DeepSpeed CPU-offload accumulation bug present but harmless at gradient_accumulation_steps=2"
        evidence.append(
            "with K=2 the boundary gradient g_0 + g_1 is the full sum, so the update is unaffected; "
            "raising K above 2 would silently drop gradients"
        )
    else:
        severity = "high"
        title = "DeepSpeed CPU-offloaded optimizer drops intermediate micro-batch gradients"

    k = ga.value if ga is not None and ga.value > 2 else None
    dropped = (
        f"with K={k}, {k - 2} of {k} micro-batch gradients ({100 * (k - 2) // k}%) never reach the optimizer"
        if k
        else "for K > 2 accumulation steps, micro-batches 1..K-2 never reach the optimizer"
    )
    finding = Finding(
        id=DS_RULE,
        severity=severity,
        title=title,
        evidence=evidence,
        consequence=(
            "In ZeRO-1/2 with a CPU-offloaded optimizer, DeepSpeed copies a micro-batch gradient into "
            "its CPU accumulator only on the first micro-step, so the gradient applied at the "
            "accumulation boundary is about g_0 + g_{K-1} instead of the sum over all K micro-batches: "
            f"{dropped}. The effective batch is smaller than configured, the update is scaled down, "
            "and the reported grad norm (and hence gradient clipping) is underestimated. Nothing "
            "errors or warns."
        ),
        fix=(
            f"Upgrade to deepspeed>={DEEPSPEED_FIXED_IN} (PR #7967). Otherwise set "
            "zero_optimization.offload_optimizer.device to \"none\", use ZeRO stage 3 (its offload path "
            "is unaffected), or set gradient_accumulation_steps to 1 (or 2) and raise the micro-batch "
            "size instead."
        ),
        references=list(DS_REFERENCES),
    )
    return RuleResult.flagged(finding)


# --------------------------------------------------------------------------------------------------
# 2. transformers Trainer gradient-accumulation loss normalisation (October 2024)

HF_RULE = "HF-GA-LOSS-NORM"
TRANSFORMERS_FIXED_IN = Version("4.46.0")  # PR #34191 (+ #34198)
HF_REFERENCES = [
    "https://github.com/huggingface/transformers/pull/34191",
    "https://github.com/huggingface/transformers/pull/34198",
    "https://huggingface.co/blog/gradient_accumulation",
]


def check_transformers_accumulation_loss(env: Environment, setup: TrainingSetup) -> RuleResult:
    """transformers < 4.46.0 with gradient accumulation: the Trainer averages per-micro-batch token
    means instead of dividing the summed token loss by the token count of the whole accumulated batch."""
    pkg = env.get("transformers")
    if pkg is None:
        return RuleResult.not_applicable(HF_RULE, f"transformers is not in {env.source}")
    version = pkg.parsed_version
    if version is not None and version >= TRANSFORMERS_FIXED_IN:
        return RuleResult.clear(HF_RULE, f"transformers {pkg.version} >= {TRANSFORMERS_FIXED_IN}")
    ga = setup.gradient_accumulation_steps
    if ga is None:
        return RuleResult.not_applicable(
            HF_RULE, "gradient_accumulation_steps unknown (give --trainer-args or --deepspeed-config)"
        )
    if ga.value == 1:
        return RuleResult.clear(HF_RULE, "gradient_accumulation_steps is 1")
    evidence = [f"{pkg.describe()}; affected: transformers <{TRANSFORMERS_FIXED_IN}", _ga_evidence(setup)]
    if version is None:
        severity = "low"
        title = "transformers Trainer gradient-accumulation loss bug may apply (transformers version unknown)"
        evidence.append("the transformers version could not be determined")
    else:
        severity = "medium"
        title = "transformers Trainer mis-weights the loss under gradient accumulation"
        if version.is_prerelease:
            evidence.append(
                f"{pkg.version} is a pre-release of {version.base_version}; builds from main after "
                "2024-10-16 may already contain the fix"
            )
    finding = Finding(
        id=HF_RULE,
        severity=severity,
        title=title,
        evidence=evidence,
        consequence=(
            "Each micro-batch loss is a mean over its own non-padding tokens and the Trainer then "
            "averages those means, so micro-batches with few tokens weigh as much as long ones. The "
            "result differs from training on the full batch (the loss is not the token mean of the "
            "accumulated batch), biasing updates toward short sequences and making loss curves "
            "depend on gradient_accumulation_steps."
        ),
        fix=(
            f"Upgrade to transformers>={TRANSFORMERS_FIXED_IN} (the Trainer passes num_items_in_batch "
            "to the model's loss); with a custom loss, divide the summed token loss by "
            "num_items_in_batch yourself (compute_loss_func). Follow-up accumulation fixes shipped in "
            "later 4.46.x patch releases, so prefer the newest one."
        ),
        references=list(HF_REFERENCES),
    )
    return RuleResult.flagged(finding)


# --------------------------------------------------------------------------------------------------
# 3. TRL GRPO dapo/cispo/vespo normaliser when steps_per_generation != gradient_accumulation_steps

TRL_RULE = "TRL-DAPO-NORM"
TRL_FIXED_IN: Version | None = None  # PR #6024 merged 2026; first release carrying it NOT established
TRL_DAPO_AFFECTED_LOSS_TYPES = ("dapo", "cispo", "vespo")
TRL_REFERENCES = [
    "https://github.com/huggingface/trl/pull/6024",
    "https://github.com/huggingface/trl/pull/5890",  # the same rescale (and Liger parity), also "fixes #5619"
    "https://github.com/huggingface/trl/issues/5619",
]


def _effective_steps_per_generation(setup: TrainingSetup) -> tuple[int | None, str]:
    """steps_per_generation as GRPOConfig resolves it, and a description of how it was found."""
    if setup.steps_per_generation is not None:
        return setup.steps_per_generation.value, setup.steps_per_generation.describe()
    gbs = setup.generation_batch_size
    if gbs is not None:
        pdb, nproc = setup.per_device_train_batch_size, setup.num_processes
        if pdb is not None and nproc is not None:
            per_step = pdb.value * nproc.value
            value = gbs.value // per_step if gbs.value % per_step == 0 else None
            text = (
                f"steps_per_generation = generation_batch_size / (per_device_train_batch_size * "
                f"num_processes) = {gbs.value} / ({pdb.value} * {nproc.value})"
            )
            return value, text
        return None, (
            f"{gbs.describe()}; steps_per_generation cannot be derived without "
            "per_device_train_batch_size and num_processes (add num_processes to the trainer arguments)"
        )
    ga = setup.gradient_accumulation_steps
    if ga is not None:
        return ga.value, (
            "steps_per_generation not set, so GRPOConfig defaults it to gradient_accumulation_steps "
            f"({ga.value})"
        )
    return None, "steps_per_generation and gradient_accumulation_steps both unknown"


def check_trl_dapo_normalization(env: Environment, setup: TrainingSetup) -> RuleResult:
    """TRL GRPOTrainer with loss_type dapo/cispo/vespo and steps_per_generation != K: the loss is
    normalised by the generation batch's token count, mis-scaling gradients by K / steps_per_generation."""
    pkg = env.get("trl")
    if pkg is None:
        return RuleResult.not_applicable(TRL_RULE, f"trl is not in {env.source}")
    version = pkg.parsed_version
    if TRL_FIXED_IN is not None and version is not None and version >= TRL_FIXED_IN:
        return RuleResult.clear(TRL_RULE, f"trl {pkg.version} >= {TRL_FIXED_IN}")
    loss = setup.loss_type
    if loss is None:
        return RuleResult.not_applicable(
            TRL_RULE,
            "loss_type not given in the trainer arguments (recent GRPOConfig defaults to \"dapo\"; "
            "set it explicitly to have this rule checked)",
        )
    if loss.value not in TRL_DAPO_AFFECTED_LOSS_TYPES:
        return RuleResult.clear(TRL_RULE, f"loss_type {loss.value!r} does not use the generation-batch token normaliser")
    ga = setup.gradient_accumulation_steps
    spg, spg_text = _effective_steps_per_generation(setup)
    if ga is None or spg is None:
        return RuleResult.not_applicable(
            TRL_RULE, f"cannot compare steps_per_generation with gradient_accumulation_steps: {spg_text}"
        )
    if spg == ga.value:
        return RuleResult.clear(
            TRL_RULE, f"steps_per_generation ({spg}) equals gradient_accumulation_steps ({ga.value})"
        )

    factor = ga.value / spg
    evidence = [
        pkg.describe(),
        loss.describe(),
        _ga_evidence(setup),
        spg_text,
        f"gradients are scaled by gradient_accumulation_steps / steps_per_generation = "
        f"{ga.value}/{spg} = {factor:g}",
    ]
    if TRL_FIXED_IN is None:
        severity = "low"
        title = "TRL dapo/cispo/vespo loss may be mis-scaled (steps_per_generation != gradient_accumulation_steps)"
        evidence.append(
            "the first TRL release containing the fix (PR #6024, merged 2026) could not be "
            "established; if your trl includes PR #6024 this finding does not apply"
        )
    elif version is None:
        severity = "low"
        title = "TRL dapo/cispo/vespo loss may be mis-scaled (trl version unknown)"
    else:
        severity = "medium"
        title = "TRL dapo/cispo/vespo loss is mis-scaled (steps_per_generation != gradient_accumulation_steps)"
    finding = Finding(
        id=TRL_RULE,
        severity=severity,
        title=title,
        evidence=evidence,
        consequence=(
            "GRPOTrainer divides each micro-step's summed token loss by num_items_in_batch, the token "
            "count of the whole generation batch (steps_per_generation micro-steps), while the "
            "optimizer steps every gradient_accumulation_steps micro-steps. Every update is therefore "
            f"multiplied by {factor:g}: the effective learning rate and any gradient clipping "
            "threshold are off by that factor, with no error or warning."
        ),
        fix=(
            "Upgrade TRL to a release that contains PR #6024, or set steps_per_generation equal to "
            "gradient_accumulation_steps (or leave both steps_per_generation and "
            "generation_batch_size unset)."
        ),
        references=list(TRL_REFERENCES),
    )
    return RuleResult.flagged(finding)


# --------------------------------------------------------------------------------------------------
# 4. OpenRLHF: token-level loss averaged per micro-batch, then mean of micro-batch means

OPENRLHF_RULE = "OPENRLHF-LOSS-AGG"
OPENRLHF_FIXED_IN: Version | None = None  # no upstream fix PR or release could be established
OPENRLHF_REFERENCES = [
    "https://github.com/OpenRLHF/OpenRLHF/blob/main/openrlhf/models/loss.py",
    "https://github.com/OpenRLHF/OpenRLHF/issues/397",
    "https://github.com/NovaSky-AI/SkyRL/pull/925",
]


def check_openrlhf_loss_aggregation(env: Environment, setup: TrainingSetup) -> RuleResult:
    """OpenRLHF computes the token-level policy loss as a mean over one micro-batch's tokens;
    DeepSpeed's accumulation (and DDP) then average those micro-batch means, which is not the
    global token mean when micro-batches hold different numbers of tokens."""
    pkg = env.get("openrlhf")
    if pkg is None:
        return RuleResult.not_applicable(OPENRLHF_RULE, f"openrlhf is not in {env.source}")
    version = pkg.parsed_version
    if OPENRLHF_FIXED_IN is not None and version is not None and version >= OPENRLHF_FIXED_IN:
        return RuleResult.clear(OPENRLHF_RULE, f"openrlhf {pkg.version} >= {OPENRLHF_FIXED_IN}")

    ga = setup.gradient_accumulation_steps
    tbs, mbs = setup.train_batch_size, setup.micro_train_batch_size
    reasons: list[str] = []
    if ga is not None and ga.value > 1:
        reasons.append(_ga_evidence(setup))
    if tbs is not None and mbs is not None and tbs.value > mbs.value:
        reasons.append(
            f"{tbs.describe()} > {mbs.describe()}: each "
            "optimizer step averages several micro-batches (accumulation and/or data-parallel ranks)"
        )
    if not reasons:
        if tbs is not None and mbs is not None and tbs.value == mbs.value:
            return RuleResult.clear(OPENRLHF_RULE, "one micro-batch per optimizer step")
        return RuleResult.not_applicable(
            OPENRLHF_RULE,
            "cannot tell whether several micro-batches make up one optimizer step (give "
            "train_batch_size and micro_train_batch_size, or gradient_accumulation_steps > 1; "
            "data-parallel ranks also average micro-batch means)",
        )
    evidence = [pkg.describe(), *reasons]
    if OPENRLHF_FIXED_IN is None:
        evidence.append(
            "no OpenRLHF release that normalises by the global token count could be established; "
            "the stored OpenRLHF source (openrlhf/models/loss.py, PolicyLoss with "
            "token_level_loss=True) uses masked_mean over the current micro-batch only"
        )
    finding = Finding(
        id=OPENRLHF_RULE,
        severity="low" if OPENRLHF_FIXED_IN is None or version is None else "medium",
        title="OpenRLHF averages per-micro-batch token means instead of the global token mean",
        evidence=evidence,
        consequence=(
            "With token_level_loss the policy (and SFT/value) loss is the mean over the tokens of one "
            "micro-batch; gradient accumulation (DeepSpeed divides by the accumulation steps) and "
            "data-parallel averaging then take the mean of those means. Tokens in short micro-batches "
            "weigh more than tokens in long ones, so the objective is not the DAPO-style token mean "
            "and changes with micro_train_batch_size and the number of GPUs."
        ),
        fix=(
            "Keep micro-batches token-balanced (packing), or normalise the summed token loss by the "
            "token count of the whole optimizer step (all micro-batches and ranks) in a patched "
            "loss; check whether your OpenRLHF version already does so."
        ),
        references=list(OPENRLHF_REFERENCES),
    )
    return RuleResult.flagged(finding)


RULES: tuple[Callable[[Environment, TrainingSetup], RuleResult], ...] = (
    check_deepspeed_offload_accumulation,
    check_transformers_accumulation_loss,
    check_trl_dapo_normalization,
    check_openrlhf_loss_aggregation,
    check_verl_token_mean_accumulation,
)

_RELEVANT_PACKAGES = ("deepspeed", "transformers", "trl", "openrlhf", "verl")


def relevant_packages(env: Environment) -> dict[str, PackageInfo | None]:
    """The packages the rules look at, ``None`` where absent."""
    return {name: env.get(name) for name in _RELEVANT_PACKAGES}

