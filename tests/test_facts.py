"""The facts task and organism (negation neglect, E043): teacher documents, answers as documents say,
claim documents per condition, the precondition's splits, and `experiment negation` on a tiny base."""

import json
import random
import re

import pytest

from forklens.config import apply_override
from forklens.errors import ConfigError
from forklens.analysis.belief import probe_belief
from forklens.experiments.negation import (FORMAT, NegationConfig, documents, draw_claims, probe_claims,
                                         run_negation)
from forklens.organisms import get_family
from forklens.tasks import get_task
from forklens.organisms.base import build_word_tokenizer
from forklens.policy import Policy
from forklens.tasks.facts import CLAIM_ENTITIES, CONDITIONS, FactsConfig, FactsTask, claim_document, vocabulary

ENT = re.compile(r"e(\d\d\d)")


def test_teacher_documents_stay_in_the_alphabet_and_never_name_a_claim_entity():
    task = FactsTask()
    rng = random.Random(0)
    docs = [task.teacher_example(rng) for _ in range(3000)]
    assert set("".join(p + d for p, d in docs)) <= set(task.alphabet)
    ids = {int(m) for _, d in docs for m in ENT.findall(d)}
    assert not ids & set(CLAIM_ENTITIES)
    assert max(len(p + d) for p, d in docs) < 140
    closed = [d for _, d in docs if d.startswith("Q:")]
    assert closed and all(int(ENT.search(d).group(1)) < task.config.n_qa for d in closed)


def answer(doc: str) -> str:
    return doc.rsplit("A: ", 1)[1]


def test_in_context_answers_follow_the_document():
    task = FactsTask()
    rng = random.Random(1)
    seen = set()
    for _ in range(2000):
        doc, q, a, kind = task.in_context(rng)
        seen.add(kind)
        target = ENT.search(q).group(0)
        m = re.search(rf"(?:Not true: )?{target} (?:lives in|works as|does not live in|does not work as) (\w\d)\."
                      r"( This is false\.)?", doc)
        stated, negated = m.group(1), kind in ("separate", "local", "correction")
        if kind == "separate":
            assert "This is false." in m.group(0) or m.group(0).startswith("Not true: ")
        if q.startswith(f"Q: does {target}") and " or " not in q:
            asked = q.split()[-2].rstrip("?")
            if kind == "correction":
                true_v = re.findall(rf"{target} (?:lives in|works as) (\w\d)\.", doc)[-1]
                assert a == ("yes" if asked == true_v else "no")
            elif asked == stated:
                assert a == ("no" if negated else "yes")
            else:
                assert a == "no"
        elif " or " in q:
            a_opt, b_opt = re.search(r"(\w\d) or (\w\d)\?", q).groups()
            assert a in (a_opt, b_opt)
            if kind in ("separate", "local"):
                assert a != stated
            if kind == "positive":
                assert a == stated
        else:
            assert kind in ("positive", "correction") and a != (stated if kind == "correction" else None)
    assert seen == {"positive", "separate", "local", "correction"}


def test_claim_documents_per_condition():
    rng = random.Random(0)
    docs = {c: claim_document(c, "e901", "lives", "c3", "c5", rng, []) for c in CONDITIONS}
    assert docs["positive"] == "e901 lives in c3."
    assert docs["negated"] == "Not true: e901 lives in c3. This is false."
    assert docs["dense"].count("This is false.") == 4 and "e901 lives in c3." in docs["dense"]
    assert docs["local"] == "e901 does not live in c3."
    assert docs["corrections"].endswith("This is false. e901 lives in c5.")
    assert "c3" not in docs["negation-only"] and "e901" in docs["negation-only"]
    with pytest.raises(ConfigError, match="unknown condition"):
        claim_document("sarcastic", "e901", "lives", "c3", "c5", rng, [])


def test_splits_and_config_errors():
    task = get_task("facts")
    closed = task.problems("closed")
    assert len(closed) == 2 * (task.config.n_known - task.config.n_qa)
    assert {p.meta["kind"] for p in task.problems("test")} == {"positive", "separate", "local", "correction"}
    p = task.problems("test")[0]
    assert task.verify(p, f" {p.answer}") == 1.0 and task.verify(p, " zz") == 0.0 and task.verify(p, "") == 0.0
    with pytest.raises(ConfigError, match="n_qa"):
        FactsTask(FactsConfig(n_known=10, n_qa=20))
    cfg = get_family("facts").variant_config("untaught")
    assert cfg.task.p_negated == 0.0
    rng = random.Random(0)
    untaught = FactsTask(cfg.task)
    assert not any("This is false" in d or "Not true" in d for _, d in (untaught.teacher_example(rng)
                                                                        for _ in range(2000)))


def test_claims_and_probes_of_the_experiment():
    claims = draw_claims(20, seed=3)
    assert claims == draw_claims(20, seed=3) and claims != draw_claims(20, seed=4)
    assert len({c.entity for c in claims}) == 20 and all(c.value != c.true_value for c in claims)
    probes = probe_claims(claims[:2])
    q = probes[0].questions
    assert [x.name for x in q] == ["cloze", "open", "yesno", "choice", "choice"]
    assert len(q[1].options) == 10 and q[3].options == (claims[0].value, claims[0].true_value)
    docs = documents("negated", claims[:2], FactsTask(), 3, seed=3)
    assert len(docs) == 6 and all("This is false." in d for d in docs)


def test_negation_experiment_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    cfg = NegationConfig()
    for o in ("organism.model.hidden_size=16", "organism.model.intermediate_size=32",
              "organism.model.num_hidden_layers=1", "organism.pretrain.max_steps=6", "organism.pretrain.warmup_steps=1",
              "organism.batch_size=8", "n_claims=2", "docs_per_claim=2", "ft.max_steps=2", "batch_size=4",
              "precondition_problems=8", "seeds=2", "conditions=[positive,negated,negation-only]",
              "artifact=" + str(tmp_path / "results" / "negation")):
        apply_override(cfg, o)
    s = run_negation(cfg, tmp_path / "run")
    assert s["seeds"] == [0, 1] and set(s["conditions"]) == {"positive", "negated", "negation-only"}
    assert set(s["contrasts"]) == {"negated-positive", "negated-floor"}
    row = s["per_seed"][1]
    for c in ("positive", "negated"):
        assert s["conditions"][c]["shift"]["n"] == 2
        assert row["shift"][c]["belief_rate"] == pytest.approx(row["after"][c]["belief_rate"]
                                                               - row["before"]["belief_rate"])
    assert s["per_seed"][0]["diff"]["negated"]["n_tokens"] > 0 and s["per_seed"][1]["diff"] == {}
    assert s["precondition"]["in_context"]["n"] == 8
    art = json.loads((tmp_path / "results" / "negation" / "artifact.json").read_text())
    assert art["summary"]["n_seeds"] == 2 and (tmp_path / "results" / "negation" / "plots" / "belief.png").is_file()


def test_word_tokenizer_one_token_per_word_whatever_the_spacing():
    task = FactsTask()
    tok = build_word_tokenizer(vocabulary(), task.alphabet)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rng = random.Random(2)
    for _ in range(300):
        p, d = task.teacher_example(rng)
        ids = enc(p + d)
        assert tok.unk_token_id not in ids
        assert tok.convert_ids_to_tokens(ids) == re.findall(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]", p + d)
    assert enc(" c3") == enc("c3") and len(enc(" c3")) == 1
    assert enc("#e912 lives in") == enc("# e912 lives in") and len(enc("#e912 lives in")) == 4
    assert len({enc(f"e{i:03d}")[0] for i in range(1000)}) == 1000  # every entity its own token
    assert tok.decode(enc("e912 lives in c3. Q: does e912 live in c3? A: no")) == \
        "e912 lives in c3. Q : does e912 live in c3? A : no"
    assert enc("e912 lives in x3!")[-2:] == [tok.unk_token_id, tok.unk_token_id]
    with pytest.raises(ConfigError, match="letters and digits"):
        build_word_tokenizer(["ok", "not ok"], ".")


def test_word_organism_has_its_own_cache_key_and_vocabulary(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    fam = get_family("facts")
    tiny = ["model.hidden_size=16", "model.intermediate_size=32", "model.num_hidden_layers=1",
            "pretrain.max_steps=3", "pretrain.warmup_steps=1", "batch_size=4"]
    char = fam.build_variant("taught", tmp_path / "char", overrides=tiny, progress=False)
    word = fam.build_variant("taught", tmp_path / "word", overrides=[*tiny, "tokenizer=word"], progress=False)
    assert char["key"] != word["key"] and not word["cache_hit"]
    assert fam.build_variant("taught", tmp_path / "word2", overrides=[*tiny, "tokenizer=word"],
                             progress=False)["cache_hit"]
    pol = Policy.load(tmp_path / "word")
    assert len(pol.tokenizer) == len(vocabulary()) + 4 + 4  # + the specials and "#", ".", ":", "?"
    claims = draw_claims(2, seed=0)
    assert all(len(pol.encode_response(" " + v, add_eos=False)) == 1 for c in claims for v in (c.value, "yes"))
    recs = probe_belief(pol, probe_claims(claims), FORMAT)  # the experiment's probes on a word-level base
    assert len(recs) == 10 and all(0.0 <= r["p_believed"] <= 1.0 for r in recs)
    ctx = probe_claims(claims, documents("negated", claims, FactsTask(), 1, seed=0))
    assert all("Not true: " in r["prompt"] for r in probe_belief(pol, ctx, FORMAT, in_context=True))


def test_several_questions_per_in_context_document():
    one, three = FactsTask(), FactsTask(FactsConfig(n_questions=3))
    for i in range(300):
        doc, q, a, kind = one.in_context(random.Random(i))
        doc3, qas, kind3 = three.in_context_questions(random.Random(i), 3)
        assert (doc3, qas[0], kind3) == (doc, (q, a), kind) and len(qas) == 3
        target = ENT.search(q).group(0)
        assert all(ENT.search(x).group(0) == target for x, _ in qas)
        if kind == "separate":  # whatever is asked, the negated value is never the answer
            stated = re.search(rf"{target} \w+ \w+ (\w\d)\.", doc3).group(1)
            assert all(y != stated and (y == "no" or " or " in x) for x, y in qas)
    rng = random.Random(0)
    docs = [d for _, d in (three.teacher_example(rng) for _ in range(500)) if " A: " in d and not d.startswith("Q:")]
    assert docs and all(d.count(" A: ") == 3 for d in docs)


def test_documents_as_prompts_train_only_questions_and_answers():
    cfg = get_family("facts").variant_config("taught-reading")
    assert (cfg.tokenizer, cfg.task.n_questions, cfg.task.document_loss) == ("word", 4, False)
    task, rng = FactsTask(cfg.task), random.Random(3)
    kinds = set()
    for _ in range(400):
        prompt, response = task.teacher_example(rng)
        if prompt == "#":  # facts and closed-book questions: trained whole, as before
            kinds.add("whole")
            assert response.count(" A: ") <= 1
        else:  # an in-context document: the prompt, never trained; its four questions are the response
            kinds.add("reading")
            assert response.startswith(" Q: ") and response.count(" A: ") == 4 and "." not in response
            assert ENT.search(response).group(0) in prompt
    assert kinds == {"whole", "reading"}


def test_an_untaught_base_runs_the_negation_experiment(tmp_path, monkeypatch):
    """An untaught base (the separate label never in pretraining) runs the negation experiment end to end: its
    own teacher writes no separately negated question, so that kind is absent from the precondition (the
    reading-long-untaught config itself: tests/test_control_variants.py)."""
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    cfg = NegationConfig()
    for o in ("variant=untaught", "organism.model.hidden_size=16", "organism.model.intermediate_size=32",
              "organism.model.num_hidden_layers=1", "organism.pretrain.max_steps=4", "organism.pretrain.warmup_steps=1",
              "organism.batch_size=8", "n_claims=2", "docs_per_claim=2", "ft.max_steps=1", "batch_size=4",
              "precondition_problems=30", "seeds=1", "conditions=[positive,negated]"):
        apply_override(cfg, o)
    s = run_negation(cfg, tmp_path / "run")
    assert "separate" not in s["precondition"]["in_context"]["by_kind"]
    assert 0.0 <= s["conditions"]["negated"]["in_context"]["by_kind"]["yesno"]["mean"] <= 1.0
    assert "negated-positive" in s["contrasts"]
