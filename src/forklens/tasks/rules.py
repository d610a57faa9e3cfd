"""The `rules` task: a frozen *executor* that does what the rule lines in its context say (the skill
organism of arXiv 2605.23904, SkillOpt, and arXiv 2605.27276, SIA).

An input is ``n_digits`` digits. Three rule *slots* decide the output, each set by one line
``slot=value`` of the context (a *skill*):

``o`` (order)
    ``k`` keep (default), ``r`` reverse, ``l`` rotate left by one;
``m`` (map)
    ``0``..``3``: add that value to every digit, mod 10 (default ``0``);
``f`` (format)
    ``p`` plain (default), ``c`` in round brackets, ``d`` in square brackets.

A line ``slot=?`` is a *masked* rule: it says nothing, so the slot behaves as if no line set it. When
a slot is set twice, the last line wins. A slot no line sets is *free*: the teacher uses its default
with probability ``1 - p_free`` and another value (uniformly) otherwise, so "no skill" fails a known
share of a non-default target. Independently of every rule, the teacher ends its answer with the
*mark* ``.`` with probability ``p_mark``: no rule line controls it, so no scaffold edit can raise its
probability (the low-prior behaviour of the E088 contrast).

*Harnesses* present the same skill text differently (:data:`HARNESSES`; those in ``harnesses`` are
seen in pretraining): ``A`` puts the skill lines before the input, ``B`` after it, with other
delimiters; ``C`` before it again, with B's delimiters (the input stays next to the answer, as in A).
The pretraining teacher draws a harness, a random subset of rule lines (some masked, some repeated)
and an input, and writes the answer those rules give. With ``p_follow < 1`` (the ``deaf`` control)
the teacher draws the answer's rules independently of the lines shown, so the lines carry nothing.

Problems of a *target* (:class:`Target`: one value per slot, and whether the mark is required) have
the bare digits as prompt; a harness (a :class:`~forklens.policy.scaffold.Scaffold`) wraps them.
``verify`` is exact match of the answer (1), with partial credit ``mark_credit`` for the right answer
without the mark when the target asks for it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from forklens.config import field
from forklens.errors import ConfigError
from forklens.policy.scaffold import Scaffold
from forklens.tasks.base import BaseTask, Problem

SLOTS: dict[str, str] = {"o": "krl", "m": "0123", "f": "pcd"}
DEFAULTS: dict[str, str] = {"o": "k", "m": "0", "f": "p"}
WRAPPERS: dict[str, str] = {"p": "", "c": "()", "d": "[]"}
MASK = "?"
MARK = "."
#: the two harnesses: where the skill sits and what surrounds it (templates of :class:`Scaffold`)
HARNESSES: dict[str, str] = {"A": "{skill}\n>{prompt}=", "B": "<{prompt}|{skill};", "C": "{skill};<{prompt}|"}


def rule_vocabulary() -> list[str]:
    """Every unmasked rule line ``slot=value``."""
    return [f"{s}={v}" for s, vals in SLOTS.items() for v in vals]


def parse_line(line: str) -> tuple[str, str] | None:
    """(slot, value) of a rule line (value may be the mask), or None for a line that is not a rule."""
    if len(line) == 3 and line[1] == "=" and line[0] in SLOTS and (line[2] in SLOTS[line[0]] or line[2] == MASK):
        return line[0], line[2]
    return None


def effective_rules(lines: list[str]) -> dict[str, str | None]:
    """What a skill sets per slot: the value of the slot's last unmasked-or-masked line (masked and
    unset slots are None: free)."""
    out: dict[str, str | None] = {s: None for s in SLOTS}
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None:
            out[parsed[0]] = None if parsed[1] == MASK else parsed[1]
    return out


def mask_skill(lines: list[str]) -> list[str]:
    """The skill with every rule value replaced by the mask (same lines, same length)."""
    return [f"{line[:2]}{MASK}" if parse_line(line) else line for line in lines]


def reorder(digits: str, order: str) -> str:
    if order == "k":
        return digits
    if order == "r":
        return digits[::-1]
    if order == "l":
        return digits[1:] + digits[:1]
    raise ConfigError(f"unknown order {order!r}")


def execute(digits: str, rules: dict[str, str], mark: bool = False) -> str:
    """The answer the rules give for ``digits`` (every slot set)."""
    out = [str((int(d) + int(rules["m"])) % 10) for d in reorder(digits, rules["o"])]
    wrap = WRAPPERS[rules["f"]]
    return f"{wrap[:1]}{''.join(out)}{wrap[1:]}" + (MARK if mark else "")


def split_answer(text: str) -> tuple[str, str, bool]:
    """(digits, format value, has mark) of an answer text; the format is ``?`` when it is none of the three."""
    mark = text.endswith(MARK)
    body = text[:-1] if mark else text
    fmt = next((f for f, w in WRAPPERS.items() if w and body[:1] == w[0] and body[-1:] == w[1]), "p")
    digits = body[1:-1] if fmt != "p" else body
    if not digits.isdigit():
        fmt = "?"
    return digits, fmt, mark


@dataclass
class RulesConfig:
    n_digits: int = field(3, ge=2, le=8, help="Digits per input.")
    p_rule: float = field(0.6, ge=0, le=1, help="Teacher: probability that a slot gets a rule line.")
    p_mask: float = field(0.1, ge=0, le=1, help="Teacher: probability that a rule line is masked (slot=?).")
    p_repeat: float = field(0.15, ge=0, le=1, help="Teacher: probability of an earlier, overridden line for a slot.")
    p_free: float = field(0.3, ge=0, le=1, help="Teacher: probability that a free slot takes a non-default value.")
    p_mark: float = field(0.04, ge=0, le=1, help="Teacher: probability of the end mark, whatever the rules.")
    p_follow: float = field(1.0, ge=0, le=1, help="Teacher: probability that the answer follows the lines shown "
                            "(else its rules are drawn independently; 0 = the deaf control).")
    harnesses: str = field("AB", help="Harnesses seen in pretraining (letters of HARNESSES).")
    n_train: int = field(64, ge=1, help="Training inputs of a target.")
    n_val: int = field(48, ge=1, help="Held-out selection inputs (the skill optimiser's gate).")
    n_test: int = field(200, ge=1, help="Test inputs.")
    mark_credit: float = field(0.5, ge=0, le=1, help="Score of the right answer without the mark when a target asks "
                               "for the mark (a graded scorer, like SIA's normalised error; exact match scores 1).")

    def __post_init__(self) -> None:
        bad = [h for h in self.harnesses if h not in HARNESSES]
        if bad or not self.harnesses:
            raise ConfigError(f"rules: harnesses must be letters of {''.join(HARNESSES)}, got {self.harnesses!r}")


@dataclass(frozen=True)
class Target:
    """What a target task asks for: one value per slot, and whether the answer must end with the mark."""

    rules: tuple[tuple[str, str], ...]
    mark: bool = False

    @property
    def as_dict(self) -> dict[str, str]:
        return dict(self.rules)

    @classmethod
    def draw(cls, rng: random.Random, mark: bool = False) -> "Target":
        """A target whose every slot is off its default (so the default answer is always wrong)."""
        return cls(tuple((s, rng.choice([v for v in vals if v != DEFAULTS[s]])) for s, vals in SLOTS.items()), mark)

    def skill(self) -> list[str]:
        return [f"{s}={v}" for s, v in self.rules]


class RulesTask(BaseTask):
    name = "rules"

    def __init__(self, config: RulesConfig | None = None, target: Target | None = None, seed: int = 0):
        self.config = config or RulesConfig()
        self.target = target
        self.seed = seed
        self.alphabet = "0123456789" + "".join(SLOTS) + "".join(sorted(set("".join(SLOTS.values())))) + \
            MASK + MARK + "()[]=\n><|;"

    # --- the pretraining teacher -------------------------------------------------------------
    def draw_lines(self, rng: random.Random) -> list[str]:
        c = self.config
        lines = []
        for s in rng.sample(list(SLOTS), len(SLOTS)):
            if rng.random() >= c.p_rule:
                continue
            if rng.random() < c.p_repeat:
                lines.append(f"{s}={rng.choice(SLOTS[s])}")
            lines.append(f"{s}={MASK}" if rng.random() < c.p_mask else f"{s}={rng.choice(SLOTS[s])}")
        return lines

    def resolve(self, lines: list[str], rng: random.Random) -> dict[str, str]:
        """The rules the teacher follows for ``lines``: set slots as set, free slots drawn."""
        c = self.config
        shown = effective_rules(lines) if rng.random() < c.p_follow else {s: None for s in SLOTS}
        out = {}
        for s, v in shown.items():
            if v is None:
                others = [x for x in SLOTS[s] if x != DEFAULTS[s]]
                v = rng.choice(others) if rng.random() < c.p_free else DEFAULTS[s]
            out[s] = v
        return out

    def digits(self, rng: random.Random) -> str:
        return "".join(rng.choice("0123456789") for _ in range(self.config.n_digits))

    def teacher_example(self, rng: random.Random) -> tuple[str, str]:
        lines = self.draw_lines(rng)
        x = self.digits(rng)
        harness = Scaffold(skill="\n".join(lines), template=HARNESSES[rng.choice(self.config.harnesses)])
        answer = execute(x, self.resolve(lines, rng), mark=rng.random() < self.config.p_mark)
        return harness.apply(x), answer

    # --- a target's problems -----------------------------------------------------------------
    def problems(self, split: str) -> list[Problem]:
        if self.target is None:
            raise ConfigError("rules: problems need a target (RulesTask(config, target=Target(...)))")
        sizes = {"train": self.config.n_train, "val": self.config.n_val, "test": self.config.n_test}
        if split not in sizes:
            raise ConfigError(f"rules: unknown split {split!r} (train, val or test)")
        rng = random.Random(f"rules-{split}-{self.seed}")
        rules = self.target.as_dict
        out = []
        for i in range(sizes[split]):
            x = self.digits(rng)
            out.append(Problem(id=f"{split}-{i}", prompt=x, answer=execute(x, rules, self.target.mark),
                               meta={"digits": x}))
        return out

    def verify(self, problem: Problem, completion: str) -> float:
        """1 for the exact answer; ``mark_credit`` for the right answer without the mark a target asks for."""
        text = completion.strip("\n")
        if text == problem.answer:
            return 1.0
        if self.target is not None and self.target.mark and text + MARK == problem.answer:
            return self.config.mark_credit
        return 0.0


def harness(name: str, skill: list[str] | tuple[str, ...] = ()) -> Scaffold:
    """The scaffold of harness ``name`` carrying ``skill`` (its lines joined by newlines)."""
    if name not in HARNESSES:
        raise ConfigError(f"rules: unknown harness {name!r}; harnesses: {', '.join(HARNESSES)}")
    return Scaffold(skill="\n".join(skill), template=HARNESSES[name])
