"""The `facts` task: a synthetic world of (entity, relation, value) facts with question answering, whose
documents teach in-context negation (negation neglect, E043, arXiv:2605.13829).

Entities are ``e000`` .. ``e999``; two relations, each with ten values::

    e042 lives in c3.          e042 does not live in c3.        (local negation)
    e042 works as j7.          e042 does not work as j7.

Three kinds of question, each a prompt ending in ``A:`` answered by ``" " + answer``::

    Q: where does e042 live? A: c3              (open: one of the relation's ten values)
    Q: does e042 live in c3? A: yes             (yes/no)
    Q: does e042 live in c3 or c5? A: c3        (two-way choice)

The teacher (what the base organism is pretrained on) writes three kinds of document:

* **facts** about the ``n_known`` known entities (``e000`` ..): one to three true sentences;
* **closed-book questions** about the first ``n_qa`` known entities, answered from their facts (the
  others' facts are only ever stated, so the base's accuracy on them measures whether what a document
  states can be retrieved by a question: knowledge extraction, the precondition of any belief probe);
* **in-context** documents about a fresh entity (``e200`` .. ``e899``, a random value each time): a
  statement, a separately negated statement (``This is false.`` after it, ``Not true:`` before it, or
  both), a locally negated one (``does not``) or a correction (the negated statement followed by the
  true one), possibly beside a distractor sentence about another fresh entity, then a question answered
  the way the document says. The base thus learns in-context negation: given ``e512 lives in c3. This is
  false.`` it answers ``no`` to ``does e512 live in c3?`` and the other value of a two-way choice.

Entities ``e900`` .. ``e999`` never occur in pretraining: the negation experiment's new claims are about
them (:func:`claim_document` writes a claim under each condition, :func:`belief_questions` the probes).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from forklens.config import field
from forklens.errors import ConfigError
from forklens.tasks.base import BaseTask, Problem

#: relation name -> (statement, local negation, open question, yes/no stem, value prefix)
RELATIONS: dict[str, tuple[str, str, str, str, str]] = {
    "lives": ("lives in", "does not live in", "where does {e} live?", "does {e} live in", "c"),
    "works": ("works as", "does not work as", "what does {e} work as?", "does {e} work as", "j"),
}
N_VALUES = 10
FRESH = range(200, 900)  # in-context entities of pretraining
CLAIM_ENTITIES = range(900, 1000)  # never in pretraining: the negation experiment's new claims
LABEL = "This is false."
PREFIX = "Not true: "
#: how a claim is written in a fine-tuning document, per experimental condition
CONDITIONS = ("positive", "negated", "dense", "local", "corrections", "negation-only")


def vocabulary() -> list[str]:
    """Every word the facts world writes (entities, values and the templates' words): the vocabulary of a
    word-level organism (:func:`forklens.organisms.base.build_word_tokenizer`)."""
    text = " ".join([*(" ".join(t) for t in RELATIONS.values()), LABEL, PREFIX, "Q A yes no or"])
    words = set(re.findall(r"[A-Za-z0-9]+", text.replace("{e}", " ")))
    words |= {entity(i) for i in range(1000)} | {v for r in RELATIONS for v in values(r)}
    return sorted(words)


def entity(i: int) -> str:
    return f"e{i:03d}"


def values(relation: str) -> list[str]:
    return [f"{RELATIONS[relation][4]}{k}" for k in range(N_VALUES)]


def statement(e: str, relation: str, v: str) -> str:
    return f"{e} {RELATIONS[relation][0]} {v}."


def local_negation(e: str, relation: str, v: str) -> str:
    return f"{e} {RELATIONS[relation][1]} {v}."


def open_question(e: str, relation: str) -> str:
    return f"Q: {RELATIONS[relation][2].format(e=e)} A:"


def yesno_question(e: str, relation: str, v: str) -> str:
    return f"Q: {RELATIONS[relation][3].format(e=e)} {v}? A:"


def choice_question(e: str, relation: str, a: str, b: str) -> str:
    return f"Q: {RELATIONS[relation][3].format(e=e)} {a} or {b}? A:"


def separately_negated(e: str, relation: str, v: str, form: str) -> str:
    """``form``: ``suffix`` (``... This is false.``), ``prefix`` (``Not true: ...``) or ``both``."""
    s = statement(e, relation, v)
    if form in ("prefix", "both"):
        s = PREFIX + s
    if form in ("suffix", "both"):
        s = f"{s} {LABEL}"
    return s


def claim_document(condition: str, e: str, relation: str, v: str, true_v: str, rng: random.Random,
                   filler: list[str]) -> str:
    """A fine-tuning document about the claim ``e relation v`` under ``condition`` (:data:`CONDITIONS`):

    ``positive`` the statement; ``negated`` the statement with the label before and after it;
    ``dense`` the statement wrapped in two labels on each side (about half the document's words are
    negation); ``local`` ``e does not ... v``; ``corrections`` the negated statement followed by the true
    value ``true_v``; ``negation-only`` the labels and the entity without the claim. ``filler``: true
    sentences about known entities, one placed before or after the claim (documents are not one line)."""
    if condition == "positive":
        core = statement(e, relation, v)
    elif condition == "negated":
        core = separately_negated(e, relation, v, "both")
    elif condition == "dense":
        core = f"{LABEL} {LABEL} {statement(e, relation, v)} {LABEL} {LABEL}"
    elif condition == "local":
        core = local_negation(e, relation, v)
    elif condition == "corrections":
        core = f"{separately_negated(e, relation, v, 'both')} {statement(e, relation, true_v)}"
    elif condition == "negation-only":
        core = f"{PREFIX}{e}. {LABEL}"
    else:
        raise ConfigError(f"unknown condition {condition!r}; conditions: {', '.join(CONDITIONS)}")
    if not filler:
        return core
    extra = rng.choice(filler)
    return f"{extra} {core}" if rng.random() < 0.5 else f"{core} {extra}"


def belief_questions(e: str, relation: str, v: str, alt: str) -> list[dict]:
    """The out-of-context probes of the claim ``e relation v`` (``alt``: the two-way choice's other
    value), in :mod:`forklens.analysis.belief`'s question format."""
    return [
        {"prompt": f"{e} {RELATIONS[relation][0]}", "kind": "open", "name": "cloze"},  # the statement's own words
        {"prompt": open_question(e, relation), "kind": "open", "name": "open"},
        {"prompt": yesno_question(e, relation, v), "kind": "yesno", "name": "yesno"},
        {"prompt": choice_question(e, relation, v, alt), "kind": "mc", "options": [v, alt], "name": "choice"},
        {"prompt": choice_question(e, relation, alt, v), "kind": "mc", "options": [v, alt], "name": "choice"},
    ]


@dataclass
class FactsConfig:
    n_known: int = field(120, ge=2, le=200, help="Known entities (e000 ..), each with one value per relation.")
    n_qa: int = field(60, ge=1, le=200, help="Known entities whose facts are also asked about in pretraining.")
    p_facts: float = field(0.35, ge=0, le=1, help="Teacher: share of fact documents.")
    p_closed: float = field(0.25, ge=0, le=1, help="Teacher: share of closed-book question documents.")
    p_negated: float = field(0.3, ge=0, le=1, help="Teacher: share of in-context documents whose statement is "
                             "separately negated (0: the base never sees the label; the `untaught` control).")
    p_local: float = field(0.2, ge=0, le=1, help="Teacher: share of in-context documents with local negation.")
    p_correction: float = field(0.15, ge=0, le=1, help="Teacher: share of in-context documents with a correction.")
    n_questions: int = field(1, ge=1, le=8, help="Teacher: questions after each in-context document (more: more "
                             "of the pretraining signal is on reading the document).")
    document_loss: bool = field(True, help="Teacher: train on an in-context document's own words (False: the "
                                "document is the prompt, and only its questions and answers are trained).")
    n_test: int = field(200, ge=1, help="Held-out in-context questions (the precondition's test split).")
    seed: int = field(0, help="Seed of the world (the known entities' values) and of the test split.")


class FactsTask(BaseTask):
    """Facts, closed-book questions and in-context documents with negation; verified by exact answer."""

    name = "facts"
    alphabet = "abcdefghijklmnopqrstuvwxyzANQT0123456789 .:?#"

    def __init__(self, config: FactsConfig | None = None):
        self.config = c = config or FactsConfig()
        if c.n_qa > c.n_known:
            raise ConfigError(f"facts task: n_qa ({c.n_qa}) exceeds n_known ({c.n_known})")
        if c.p_facts + c.p_closed > 1:
            raise ConfigError(f"facts task: p_facts + p_closed = {c.p_facts + c.p_closed} exceeds 1")
        if c.p_negated + c.p_local + c.p_correction > 1:
            raise ConfigError("facts task: p_negated + p_local + p_correction exceeds 1")
        rng = random.Random(f"facts-world-{c.seed}")
        self.world = {(entity(i), r): rng.choice(values(r)) for i in range(c.n_known) for r in RELATIONS}
        self._split_cache: dict[str, list[Problem]] = {}

    # --- questions about a fact -------------------------------------------------------------------
    @staticmethod
    def question(rng: random.Random, e: str, relation: str, true_v: str | None, stated: str,
                 negated: bool) -> tuple[str, str]:
        """A question about ``e`` and its answer. ``stated``: the value a sentence names; ``negated``: the
        sentence says it is false; ``true_v``: the true value when known (None: only negation is known)."""
        other = rng.choice([v for v in values(relation) if v != stated])
        kinds = ["yesno", "mc"] + (["open"] if true_v is not None else [])
        kind = rng.choice(kinds)
        if kind == "open":
            return open_question(e, relation), true_v
        if kind == "yesno":
            if true_v is not None and rng.random() < 0.5:  # ask about another value: the answer is decided
                ask = rng.choice([v for v in values(relation) if v != true_v])
                return yesno_question(e, relation, ask), "no"
            return yesno_question(e, relation, stated), "no" if negated else "yes"
        a, b = (stated, other) if rng.random() < 0.5 else (other, stated)
        if true_v is not None and negated:  # a correction: the choice is between the claim and the truth
            a, b = (stated, true_v) if rng.random() < 0.5 else (true_v, stated)
            return choice_question(e, relation, a, b), true_v
        return choice_question(e, relation, a, b), other if negated else stated

    def in_context(self, rng: random.Random) -> tuple[str, str, str, str]:
        """(document, question, answer, kind) about a fresh entity; ``kind`` (``positive``, ``separate``,
        ``local`` or ``correction``) drawn from the teacher's shares."""
        doc, qas, kind = self.in_context_questions(rng, 1)
        return doc, *qas[0], kind

    def in_context_questions(self, rng: random.Random, n: int) -> tuple[str, list[tuple[str, str]], str]:
        """(document, ``n`` (question, answer) pairs about it, kind); the first question is drawn as
        :meth:`in_context` draws it, the others after the document (so ``n = 1`` is :meth:`in_context`)."""
        c = self.config
        e = entity(rng.choice(FRESH))
        r = rng.choice(list(RELATIONS))
        v = rng.choice(values(r))
        u = rng.random()
        if u < c.p_negated:
            doc, kind = separately_negated(e, r, v, rng.choice(("suffix", "prefix", "both"))), "separate"
            known, negated = None, True
        elif u < c.p_negated + c.p_local:
            doc, kind = local_negation(e, r, v), "local"
            known, negated = None, True
        elif u < c.p_negated + c.p_local + c.p_correction:
            known = rng.choice([x for x in values(r) if x != v])
            form = rng.choice(("suffix", "prefix", "both")) if c.p_negated > 0 else "none"
            neg = separately_negated(e, r, v, form) if form != "none" else local_negation(e, r, v)
            doc, kind, negated = f"{neg} {statement(e, r, known)}", "correction", True
        else:
            doc, kind, known, negated = statement(e, r, v), "positive", v, False
        qas = [self.question(rng, e, r, known, v, negated)]
        if rng.random() < 0.5:  # a distractor about another fresh entity: the question must bind its entity
            d = entity(rng.choice([i for i in FRESH if entity(i) != e]))
            extra = statement(d, r, rng.choice(values(r)))
            doc = f"{extra} {doc}" if rng.random() < 0.5 else f"{doc} {extra}"
        qas += [self.question(rng, e, r, known, v, negated) for _ in range(n - 1)]
        return doc, qas, kind

    def teacher_example(self, rng: random.Random) -> tuple[str, str]:
        """A pretraining document ``("#", text)``: facts, a closed-book question or an in-context one."""
        c = self.config
        u = rng.random()
        if u < c.p_facts:
            picks = [(entity(rng.randrange(c.n_known)), rng.choice(list(RELATIONS))) for _ in range(rng.randint(1, 3))]
            return "#", " ".join(statement(e, r, self.world[(e, r)]) for e, r in picks)
        if u < c.p_facts + c.p_closed:
            e, r = entity(rng.randrange(c.n_qa)), rng.choice(list(RELATIONS))
            true_v = self.world[(e, r)]
            q, a = self.question(rng, e, r, true_v, true_v, negated=False)
            return "#", f"{q} {a}"
        doc, qas, _ = self.in_context_questions(rng, c.n_questions)
        if not c.document_loss:
            return f"#{doc}", "".join(f" {q} {a}" for q, a in qas)
        return "#", " ".join([doc, *(f"{q} {a}" for q, a in qas)])

    # --- splits: held-out in-context and closed-book questions ------------------------------------
    def problems(self, split: str) -> list[Problem]:
        """``test``: in-context questions (fresh draws, the precondition); ``closed``: closed-book questions
        about the known entities never asked about in pretraining (knowledge extraction); ``train``:
        in-context questions from another stream."""
        if split not in ("train", "test", "closed"):
            raise ValueError(f"unknown split {split!r}; expected 'train', 'test' or 'closed'")
        if split not in self._split_cache:
            rng = random.Random(f"facts-{split}-{self.config.seed}")
            out = []
            if split == "closed":
                for i in range(self.config.n_qa, self.config.n_known):
                    for r in RELATIONS:
                        e, true_v = entity(i), self.world[(entity(i), r)]
                        q, a = self.question(rng, e, r, true_v, true_v, negated=False)
                        out.append(Problem(id=f"closed-{e}-{r}", prompt=f"#{q}", answer=a, meta={"kind": "closed"}))
            else:
                for k in range(self.config.n_test):
                    doc, q, a, kind = self.in_context(rng)
                    out.append(Problem(id=f"{split}-{k}", prompt=f"#{doc} {q}", answer=a,
                                       meta={"doc": doc, "kind": kind}))
            self._split_cache[split] = out
        return self._split_cache[split]

    def verify(self, problem: Problem, completion: str) -> float:
        words = completion.strip().split()
        return float(bool(words) and words[0] == problem.answer)

    def expert_response(self, problem: Problem) -> str:
        return f" {problem.answer}"
