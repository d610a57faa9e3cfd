"""The `agent` model organism: multi-hop questions answered through a lookup tool.

Every question comes with its own **knowledge base**, a random function over (relation, entity)
seeded by a per-question ``kb_seed`` that the model never sees. The answer is therefore independent
of the prompt text: nothing can be memorised, and the only way to the answer is the tool.

Entities are ``entity_len`` lowercase letters (``qwe``); relations ``A``-``F`` map an entity to an
entity; attributes ``X``-``Z`` map an entity to a digit. Two kinds of question:

* **bridge** (``d`` sequential lookups): ``qwe.A.C>`` asks for the C of the A of qwe. Each lookup
  needs the previous lookup's result;
* **comparison** (``d`` independent lookups): ``^X(qwe,rty)>`` asks which listed entity has the
  largest attribute X (the maximum is unique by construction); the answer is its position in the
  list, ``1``-based (``!2``), so answering needs a comparison of looked-up digits but no copying.

An episode, with the observation tokens the environment appends in brackets::

    prompt    qwe.A.C>
    episode   ?A(qwe)[=rty;]?C(rty)[=uio;]!uio<eos>

The model writes a tool call ``?R(ent)``; its turn ends at ``)`` and the environment appends
``=VALUE;`` (``=-;`` for a malformed or unknown call). The model answers with ``!ANSWER<eos>``. With a
cap of ``T`` tool calls, the environment appends the answer marker ``!`` right after the ``T``-th
observation, so the model's next turn must be the answer; with ``T = 0`` the marker follows the
prompt and the model answers without tools. Any turn that is not a tool call ends the episode.

**The noisy teacher.** The base organism is pretrained on teacher trajectories that look up one
more fact with probability ``p_continue`` at each point where more is needed and otherwise stop
and answer with what they have: the last entity seen for a bridge question (answering the
sub-question instead of the question), the position of the best entity looked up so far for a
comparison (``1`` before any lookup). Full chains therefore have probability ``p_continue ** d``:
the right strategy is in the base at low probability, lower the deeper the question. **Gold**
trajectories (for SFT) always do every lookup. Both look entities up in the order the question lists
them, so every copy the model makes is positional (from the prompt by lookup count, or from the
latest observation). Two earlier versions needed content-addressed (induction) copying, which the
3-layer organism did not learn reliably in 1000-2000 pretraining steps: a random comparison order,
and comparison answers written as the winning entity's code (most such answers were not even listed
entities, even after every lookup).

The verifier parses the text after the final ``!`` and requires it to equal the answer exactly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from forklens.config import field
from forklens.errors import ConfigError
from forklens.policy import Samples
from forklens.policy.episodes import sample_episodes
from forklens.tasks.base import BaseTask, Problem, RolloutSettings

ENTITY_CHARS = "abcdefghijklmnopqrstuvwxyz"
RELATIONS = "ABCDEF"
ATTRIBUTES = "XYZ"
ANSWER_MARKER = "!"
END_OF_PROMPT = ">"
UNKNOWN = "-"
#: bump when the task format or the teacher changes, so cached base organisms are rebuilt
FORMAT_VERSION = 3

CALL_RE = re.compile(r"\?([A-Z])\(([a-z]*)\)")
ANSWER_RE = re.compile(r"!([a-z]+|[0-9]+)$")


@dataclass
class AgentConfig:
    entity_len: int = field(3, ge=1, help="Letters per entity code.")
    bridge_depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4],
                                     ge=1, help="Lookups a bridge question needs (drawn uniformly).")
    comparison_sizes: list[int] = field(default_factory=lambda: [2, 3],
                                        ge=2, help="Entities a comparison question compares (drawn uniformly).")
    p_comparison: float = field(0.25, ge=0, le=1, help="Fraction of comparison questions (the rest are bridge questions).")
    p_continue: float = field(0.5, ge=0, le=1, help="Noisy teacher: probability of one more lookup wherever one is needed.")
    p_right: float = field(1.0, ge=0, le=1, help="Noisy teacher: probability that a bridge lookup it makes uses the "
                           "right relation; otherwise it slips to a wrong one (slip_relation) and goes on from there.")
    kb: Literal["random", "shift"] = field("random", help="Knowledge base of a question: 'random' (a private random "
                                           "one per question) or 'shift' (SHIFT_KB: one global, computable tool).")
    train_depths: list[int] = field(default_factory=list, ge=1,
                                    help="Bridge depths of the train split (empty: bridge_depths).")
    test_depths: list[int] = field(default_factory=list, ge=1,
                                   help="Bridge depths of the test split (empty: bridge_depths).")
    n_train: int = field(200, ge=1, help="Training questions (RL and the matched SFT set).")
    n_test: int = field(100, ge=1, help="Held-out test questions.")
    seed: int = field(0, help="Seed of the question splits.")


# ------------------------------------------------------------------------------------ knowledge base


def _rng(*parts) -> random.Random:
    return random.Random("-".join(str(p) for p in parts))  # str seeds hash with sha512: stable everywhere


#: the ``kb_seed`` of the predictable tool (``AgentConfig.kb = "shift"``): one global knowledge base that
#: is a computable function of the call, the same for every question
SHIFT_KB = -1


def kb_entity(kb_seed: int, relation: str, entity: str, entity_len: int = 3) -> str:
    """The ``relation`` of ``entity`` in knowledge base ``kb_seed`` (an entity code). In
    :data:`SHIFT_KB` relation number ``r`` (A = 0) shifts every letter by ``r + 1`` (``qwe.A`` = ``rxf``)."""
    if kb_seed == SHIFT_KB:
        shift = RELATIONS.index(relation) + 1
        return "".join(ENTITY_CHARS[(ENTITY_CHARS.index(c) + shift) % 26] for c in entity)
    rng = _rng("kb", kb_seed, relation, entity)
    return "".join(rng.choice(ENTITY_CHARS) for _ in range(entity_len))


def kb_value(kb_seed: int, attribute: str, entity: str) -> int:
    """The ``attribute`` of ``entity`` in knowledge base ``kb_seed`` (a digit). In :data:`SHIFT_KB`: the
    sum of the letters' positions (a = 0) plus the attribute number (X = 0), mod 10."""
    if kb_seed == SHIFT_KB:
        return (sum(ENTITY_CHARS.index(c) for c in entity) + ATTRIBUTES.index(attribute)) % 10
    return _rng("kb", kb_seed, attribute, entity).randrange(10)


def is_entity(text: str, entity_len: int = 3) -> bool:
    return len(text) == entity_len and all(c in ENTITY_CHARS for c in text)


def lookup(kb_seed: int, name: str, entity: str, entity_len: int = 3) -> str | None:
    """The tool: ``name(entity)`` in knowledge base ``kb_seed``, or None for an unknown call."""
    if not is_entity(entity, entity_len):
        return None
    if name in RELATIONS:
        return kb_entity(kb_seed, name, entity, entity_len)
    if name in ATTRIBUTES:
        return str(kb_value(kb_seed, name, entity))
    return None


def slip_relation(relations: str, i: int) -> str:
    """The noisy teacher's wrong relation at hop ``i`` (0-based) of a chain: the nearest other listed
    relation that differs from the right one (``i-1`` first, then ``i+1``, ``i-2``, ...), else the next
    relation letter (cyclic). Deterministic, so a slip is one specific positional confusion."""
    right = relations[i]
    for off in range(1, len(relations)):
        for j in (i - off, i + off):
            if 0 <= j < len(relations) and relations[j] != right:
                return relations[j]
    return RELATIONS[(RELATIONS.index(right) + 1) % len(RELATIONS)]


# ------------------------------------------------------------------------------------ environment


@dataclass
class EnvState:
    """Per-episode state of :class:`ToolEnv`."""

    T: int
    calls: list[str]
    forced: bool = False  # the answer marker was appended at the cap: the next turn is the answer


class ToolEnv:
    """The lookup tool with a cap of ``T`` calls per episode (see the module docstring).

    The episode sampler drives it: :meth:`reset` gives the text appended after the prompt (the
    forced answer marker when ``T == 0``), :meth:`step` takes the text of a model turn that ended
    with one of :attr:`stop_strings` and returns ``(observation, done)``.
    """

    stop_strings = (")",)

    def __init__(self, entity_len: int = 3):
        self.entity_len = entity_len

    def reset(self, problem: Problem, T: int) -> tuple[EnvState, str]:
        if T < 0:
            raise ValueError(f"the tool-call cap T must be >= 0, got {T}")
        state = EnvState(T=T, calls=[], forced=T == 0)
        return state, ANSWER_MARKER if T == 0 else ""

    def step(self, problem: Problem, state: EnvState, turn_text: str) -> tuple[str, bool]:
        if state.forced:  # the turn after the forced marker is the answer, whatever it says
            return "", True
        m = CALL_RE.fullmatch(turn_text)
        if m is None:  # an answer, or anything that is not a tool call, ends the episode
            return "", True
        state.calls.append(turn_text)
        value = lookup(problem.meta["kb_seed"], m.group(1), m.group(2), self.entity_len)
        obs = f"={value if value is not None else UNKNOWN};"
        if len(state.calls) >= state.T:
            obs += ANSWER_MARKER
            state.forced = True
        return obs, False


def parse_answer(completion: str) -> str | None:
    """The answer after the final answer marker (an entity code or a number), when the transcript
    ends with ``!ANSWER``."""
    m = ANSWER_RE.search(completion.strip())
    return m.group(1) if m else None


def tool_calls(completion: str) -> list[str]:
    """The tool calls in a transcript, in order (``?R(ent)`` strings)."""
    return [m.group(0) for m in CALL_RE.finditer(completion)]


# ------------------------------------------------------------------------------------ exploration

EXPLORE_MARKER = "?"


def listed_entities(problem: Problem) -> list[str]:
    """The entities a question names: the start entity of a bridge question, the compared ones."""
    meta = problem.meta
    return [meta["start"]] if meta["type"] == "bridge" else list(meta["entities"])


def checkpoints(problem: Problem) -> list[tuple[str, str]]:
    """The enumerated checkpoints of a question's knowledge base for exploration coverage: every
    relation and attribute of every listed entity, as (name, entity) facts (9 per entity)."""
    return [(name, e) for e in listed_entities(problem) for name in RELATIONS + ATTRIBUTES]


def coverage(problem: Problem, calls: list[str]) -> float:
    """Exploration coverage (ECC): the fraction of :func:`checkpoints` that ``calls`` (``?R(ent)``
    strings) looked up. Repeats count once; calls outside the checkpoints count for nothing."""
    points = set(checkpoints(problem))
    seen = set()
    for call in calls:
        m = CALL_RE.fullmatch(call)
        if m and (m.group(1), m.group(2)) in points:
            seen.add((m.group(1), m.group(2)))
    return len(seen) / len(points)


def exploration_problem(problem: Problem) -> Problem:
    """An exploration prompt over the same knowledge base, with no task: ``?qwe,rty>`` asks the model to
    look around the listed entities. It has no answer; its reward is :func:`coverage`."""
    prompt = EXPLORE_MARKER + ",".join(listed_entities(problem)) + END_OF_PROMPT
    return Problem(id=f"{problem.id}-explore", prompt=prompt, answer="", meta={**problem.meta, "explore": True})


def coverage_reward(prompts, completions, problem, episode=None, **_) -> list[float]:
    """Coverage of each episode (TRL reward signature). Uses the calls the environment executed
    (``episode``) when given, else the calls written in the completion."""
    out = []
    for k, (p, text) in enumerate(zip(problem, completions)):
        calls = episode[k].calls if episode is not None else tool_calls(text)
        out.append(coverage(p, calls))
    return out


# ------------------------------------------------------------------------------------ the task

Segment = tuple[str, bool]  # (text, written by the environment)


class AgentTask(BaseTask):
    """Bridge and comparison questions over per-question knowledge bases, answered with a tool."""

    name = "agent"
    default_caps = (0, 1, 2, 3, 5)
    alphabet = ENTITY_CHARS + RELATIONS + ATTRIBUTES + "0123456789" + ".^(),>?=;!" + UNKNOWN

    def __init__(self, config: AgentConfig | None = None):
        self.config = config or AgentConfig()
        c = self.config
        if not c.bridge_depths or min(c.bridge_depths) < 1:
            raise ValueError("bridge_depths must be a non-empty list of depths >= 1")
        if not c.comparison_sizes or min(c.comparison_sizes) < 2:
            raise ValueError("comparison_sizes must be a non-empty list of sizes >= 2")
        for name in ("train_depths", "test_depths"):
            if min(getattr(c, name), default=1) < 1:
                raise ValueError(f"{name} must hold depths >= 1 (empty: bridge_depths)")
        self._split_cache: dict[str, list[Problem]] = {}

    def environment(self) -> ToolEnv:
        return ToolEnv(self.config.entity_len)

    def check_caps(self, Ts: Sequence[int]) -> None:
        if any(T < 0 for T in Ts):
            raise ConfigError(f"tool-call caps must be >= 0, got T={list(Ts)}")

    def rollout(self, policy, problems: Sequence[Problem], n: int, sampling: RolloutSettings, seed: int = 0,
                batch_size: int | None = None) -> Samples:
        """``n`` episodes per question with the lookup tool, at most ``sampling.T`` calls each (forced
        answer at the cap); observations are marked in ``env_masks``."""
        extra = {"batch_size": batch_size} if batch_size is not None else {}
        eps = sample_episodes(policy, self.environment(), problems, n=n, T=sampling.T,
                              temperature=sampling.temperature, top_p=sampling.top_p,
                              turn_tokens=sampling.turn_tokens, seed=seed, **extra)
        return eps.as_samples()

    def rollout_metrics(self, problems: Sequence[Problem], samples: Samples) -> dict[str, float]:
        """Tool calls per episode, the fraction forced to answer at the cap, and exploration coverage
        of the knowledge base (:func:`coverage`), over the episodes of ``samples``."""
        eps = samples.episodes or []
        if not eps:
            return {}
        return {"tool_calls_mean": sum(len(e.calls) for e in eps) / len(eps),
                "forced_frac": sum(e.forced for e in eps) / len(eps),
                "coverage": sum(coverage(p, e.calls) for p, e in zip(problems, eps)) / len(eps)}

    # --- questions ---------------------------------------------------------------------------
    def _entity(self, rng: random.Random) -> str:
        return "".join(rng.choice(ENTITY_CHARS) for _ in range(self.config.entity_len))

    def _kb_seed(self, rng: random.Random) -> int:
        kb_seed = rng.randrange(2**31)  # drawn in both modes, so the questions' other draws stay the same
        return SHIFT_KB if self.config.kb == "shift" else kb_seed

    def bridge(self, rng: random.Random, depth: int, pid: str = "bridge") -> Problem:
        """A bridge question of ``depth`` sequential lookups; all entities on the chain are distinct."""
        L = self.config.entity_len
        while True:
            kb_seed = self._kb_seed(rng)
            start = self._entity(rng)
            rels = "".join(rng.choice(RELATIONS) for _ in range(depth))
            chain = [start]
            for r in rels:
                chain.append(kb_entity(kb_seed, r, chain[-1], L))
            if len(set(chain)) == len(chain):
                break
        return Problem(id=pid, prompt=f"{start}." + ".".join(rels) + END_OF_PROMPT, answer=chain[-1],
                       meta={"type": "bridge", "depth": depth, "kb_seed": kb_seed, "start": start,
                             "relations": rels, "chain": chain})

    def comparison(self, rng: random.Random, size: int, pid: str = "comparison") -> Problem:
        """Which of ``size`` distinct entities has the largest attribute (a unique maximum)."""
        while True:
            kb_seed = self._kb_seed(rng)
            attr = rng.choice(ATTRIBUTES)
            ents: list[str] = []
            while len(ents) < size:
                e = self._entity(rng)
                if e not in ents:
                    ents.append(e)
            values = [kb_value(kb_seed, attr, e) for e in ents]
            if values.count(max(values)) == 1:
                break
        answer = str(values.index(max(values)) + 1)
        return Problem(id=pid, prompt=f"^{attr}(" + ",".join(ents) + ")" + END_OF_PROMPT, answer=answer,
                       meta={"type": "comparison", "depth": size, "kb_seed": kb_seed, "attribute": attr,
                             "entities": ents, "values": values})

    def random_problem(self, rng: random.Random, pid: str = "q") -> Problem:
        c = self.config
        if rng.random() < c.p_comparison:
            return self.comparison(rng, rng.choice(c.comparison_sizes), pid)
        return self.bridge(rng, rng.choice(c.bridge_depths), pid)

    def kinds(self, split: str | None = None) -> list[tuple[str, int, float]]:
        """(type, depth, probability) of every kind of question the task draws: for pretraining
        (``split=None``, depths ``bridge_depths``) or for a split (``train_depths`` / ``test_depths``
        when set)."""
        c = self.config
        depths = {"train": c.train_depths, "test": c.test_depths}.get(split or "") or c.bridge_depths
        out = [("bridge", d, (1 - c.p_comparison) / len(depths)) for d in depths]
        out += [("comparison", s, c.p_comparison / len(c.comparison_sizes)) for s in c.comparison_sizes]
        return [k for k in out if k[2] > 0]

    def problems(self, split: str) -> list[Problem]:
        """A fixed split, stratified: each kind of question gets its share of the ``n`` questions
        (largest remainders), in a seeded random order."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        if split not in self._split_cache:
            n = self.config.n_test if split == "test" else self.config.n_train
            rng = _rng("agent", split, self.config.seed)
            kinds = self.kinds(split)
            counts = [int(n * w) for _, _, w in kinds]
            by_remainder = sorted(range(len(kinds)), key=lambda i: -(n * kinds[i][2] - counts[i]))
            for i in by_remainder[: n - sum(counts)]:
                counts[i] += 1
            schedule = [k[:2] for k, m in zip(kinds, counts) for _ in range(m)]
            rng.shuffle(schedule)
            out = []
            for i, (kind, d) in enumerate(schedule):
                make = self.bridge if kind == "bridge" else self.comparison
                out.append(make(rng, d, f"{split}-{i:04d}"))
            self._split_cache[split] = out
        return self._split_cache[split]

    # --- trajectories ------------------------------------------------------------------------
    def _call(self, problem: Problem, name: str, entity: str) -> list[Segment]:
        value = lookup(problem.meta["kb_seed"], name, entity, self.config.entity_len)
        return [(f"?{name}({entity})", False), (f"={value if value is not None else UNKNOWN};", True)]

    def trajectory(self, problem: Problem, n_lookups: int) -> list[Segment]:
        """Segments of an episode that makes its first ``n_lookups`` lookups, then answers with what it has.

        Bridge: the chain's first ``n_lookups`` hops, answer = the last entity seen (the start entity
        without a lookup). Comparison: the first ``n_lookups`` listed entities, answer = the one with
        the largest value among them, as its 1-based position (``1`` without a lookup). The final answer
        segment has no EOS (the SFT source appends it).
        """
        meta = problem.meta
        segs: list[Segment] = []
        if meta["type"] == "bridge":
            n_lookups = min(n_lookups, meta["depth"])
            for i in range(n_lookups):
                segs += self._call(problem, meta["relations"][i], meta["chain"][i])
            answer = meta["chain"][n_lookups]
        else:
            ents, values = meta["entities"], meta["values"]
            seen = list(range(min(n_lookups, len(ents))))
            for i in seen:
                segs += self._call(problem, meta["attribute"], ents[i])
            answer = str(max(seen, key=lambda i: (values[i], -i)) + 1) if seen else "1"
        return segs + [(ANSWER_MARKER + answer, False)]

    def slipped_trajectory(self, problem: Problem, n_lookups: int, right: Sequence[bool]) -> list[Segment]:
        """A bridge episode of ``n_lookups`` hops where hop ``i`` uses the right relation when
        ``right[i]`` and :func:`slip_relation` otherwise, each on the entity the previous hop returned;
        the answer is the last entity seen."""
        meta = problem.meta
        rels, entity = meta["relations"], meta["start"]
        segs: list[Segment] = []
        for i in range(min(n_lookups, meta["depth"])):
            rel = rels[i] if right[i] else slip_relation(rels, i)
            segs += self._call(problem, rel, entity)
            entity = lookup(meta["kb_seed"], rel, entity, self.config.entity_len)
        return segs + [(ANSWER_MARKER + entity, False)]

    def gold_trajectory(self, problem: Problem) -> list[Segment]:
        """The expert trajectory: every lookup, in the question's order, then the right answer."""
        return self.trajectory(problem, problem.meta["depth"])

    def teacher_trajectory(self, problem: Problem, rng: random.Random) -> list[Segment]:
        """The noisy teacher: one more lookup with probability ``p_continue`` wherever one is needed; with
        ``p_right < 1`` each bridge lookup it makes uses the right relation with probability ``p_right``
        and slips otherwise (:meth:`slipped_trajectory`), so every hop is shown at every depth while the
        all-right chain has probability ``p_right ** d``."""
        d = problem.meta["depth"]
        n = 0
        while n < d and rng.random() < self.config.p_continue:
            n += 1
        if self.config.p_right < 1.0 and problem.meta["type"] == "bridge":  # no draws at 1.0: same teacher as before
            return self.slipped_trajectory(problem, n, [rng.random() < self.config.p_right for _ in range(n)])
        return self.trajectory(problem, n)

    def teacher_example(self, rng: random.Random) -> tuple[str, list[Segment]]:
        """A (prompt, segments) pretraining example on a fresh random question."""
        problem = self.random_problem(rng)
        return problem.prompt, self.teacher_trajectory(problem, rng)

    def expert_response(self, problem: Problem) -> str:
        """The gold trajectory as one text (observations included)."""
        return "".join(t for t, _ in self.gold_trajectory(problem))

    def coverage(self, problem: Problem, calls: list[str]) -> float:
        """Exploration coverage of an episode's calls (:func:`coverage`)."""
        return coverage(problem, calls)

    # --- verifier ----------------------------------------------------------------------------
    def verify(self, problem: Problem, completion: str) -> float:
        """1.0 when the transcript ends with ``!`` and exactly the answer, else 0.0."""
        got = parse_answer(completion)
        return 1.0 if got is not None and got == problem.answer else 0.0
