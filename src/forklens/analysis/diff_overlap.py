"""Do two diffs move the same tokens? (``forklens diff-overlap A B``)

Typical use: A = base vs base+skill (``forklens diff --base M --rl-skill SKILL.md``) and B = base vs RL,
both scoring the *same* responses (``--responses A/responses.jsonl``). Whether a skill file (arXiv
2605.23904) or a harness edit (arXiv 2605.27276) moves the tokens RL moves is then a measurement:

* a token is **moved** in a diff when the tuned side's argmax is not the base's (``rank_under_base > 1``);
* ``recall_of_b`` = |moved in both| / |moved in B| (how many of B's moves A also makes) and
  ``precision_of_b`` = |moved in both| / |moved in A|; ``jaccard``;
* ``lift`` = |moved in both| / (|A| |B| / N): 1 when the two sets are as independent as chance makes them;
* ``same_token`` = among tokens moved in both, the fraction where both tuned sides pick the same token;
* ``kl_spearman``: rank correlation of KL(base || tuned) between the two diffs over all shared tokens.

Ratios come with a percentile bootstrap over prompts (responses of one prompt resampled together).
Tokens are matched by (prompt id, sample id, position) and must carry the same token id: two diffs
of different responses are an error that says how to score the same ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from forklens.analysis.curves import bootstrap_ci
from forklens.errors import DataError
from forklens.rewards.confidence import spearman as rank_correlation
from forklens.tasks.dataset import iter_jsonl, read_utf8

__all__ = ["compare_diffs", "load_token_rows", "spearman", "write_overlap"]

_KEEP = ("prompt_id", "sample_id", "position", "token_id", "rank_under_base", "rl_token_id", "kl_base_rl")


def load_token_rows(diff_dir: str | Path) -> list[dict[str, Any]]:
    """The per-token rows of a ``forklens diff`` output folder (tokens.jsonl or tokens.parquet)."""
    folder = Path(diff_dir)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (give the --out folder of a `forklens diff` run)")
    jsonl, parquet = folder / "tokens.jsonl", folder / "tokens.parquet"
    if jsonl.is_file():
        rows = []
        for lineno, obj in iter_jsonl(jsonl, read_utf8(jsonl)):
            missing = [k for k in _KEEP if k not in obj]
            if missing:
                raise DataError(f"{jsonl} line {lineno}: missing {', '.join(missing)} (not a forklens diff tokens file?)")
            rows.append({k: obj[k] for k in _KEEP})
        return rows
    if parquet.is_file():
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{parquet} needs pyarrow to read: pip install pyarrow") from None
        table = pq.read_table(parquet, columns=list(_KEEP))
        return table.to_pylist()
    raise DataError(f"{folder} has neither tokens.jsonl nor tokens.parquet (is it a `forklens diff` output folder?)")


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None with fewer than 3 pairs or no spread."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys must have the same length")
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return rank_correlation(xs, ys)


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    return str(row["prompt_id"]), int(row["sample_id"]), int(row["position"])


def compare_diffs(rows_a: Iterable[dict[str, Any]], rows_b: Iterable[dict[str, Any]], *,
                  names: tuple[str, str] = ("A", "B"), seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """Overlap of the tokens two diffs move, on the tokens both scored (see the module docstring)."""
    a = {_key(r): r for r in rows_a}
    b = {_key(r): r for r in rows_b}
    shared = sorted(set(a) & set(b))
    if not shared:
        raise DataError(f"{names[0]} and {names[1]} share no (prompt id, sample id, position): they scored "
                        "different prompts; run the second diff with --responses FIRST/responses.jsonl")
    for k in shared:
        if int(a[k]["token_id"]) != int(b[k]["token_id"]):
            raise DataError(f"{names[0]} and {names[1]} scored different responses (prompt {k[0]!r}, sample {k[1]}, "
                            f"position {k[2]}: token {a[k]['token_id']} vs {b[k]['token_id']}); run the second diff "
                            f"with --responses FIRST/responses.jsonl so both score the same tokens")
    prompts = sorted({k[0] for k in shared})
    index = {p: i for i, p in enumerate(prompts)}
    # per prompt: [N, moved A, moved B, moved both, same token among both]
    counts = [[0, 0, 0, 0, 0] for _ in prompts]
    kl_a, kl_b = [], []
    for k in shared:
        ra, rb = a[k], b[k]
        ma, mb = int(ra["rank_under_base"]) > 1, int(rb["rank_under_base"]) > 1
        c = counts[index[k[0]]]
        c[0] += 1
        c[1] += ma
        c[2] += mb
        c[3] += ma and mb
        c[4] += ma and mb and int(ra["rl_token_id"]) == int(rb["rl_token_id"])
        if ra.get("kl_base_rl") is not None and rb.get("kl_base_rl") is not None:
            kl_a.append(float(ra["kl_base_rl"]))
            kl_b.append(float(rb["kl_base_rl"]))

    def total(idx: Iterable[float]) -> list[int]:
        out = [0, 0, 0, 0, 0]
        for i in idx:
            for j, v in enumerate(counts[int(i)]):
                out[j] += v
        return out

    def ratio(num: int, den: int) -> float:
        return num / den if den else 0.0

    stats = {
        "recall_of_b": lambda t: ratio(t[3], t[2]),
        "precision_of_b": lambda t: ratio(t[3], t[1]),
        "jaccard": lambda t: ratio(t[3], t[1] + t[2] - t[3]),
        "lift": lambda t: ratio(t[3] * t[0], t[1] * t[2]),
        "same_token": lambda t: ratio(t[4], t[3]),
    }
    n, moved_a, moved_b, both, same = total(range(len(prompts)))
    ids = [float(i) for i in range(len(prompts))]
    intervals = {}
    for name, fn in stats.items():
        iv = bootstrap_ci(ids, resamples=resamples, seed=seed, statistic=lambda xs, fn=fn: fn(total(xs)))
        intervals[name] = iv.as_dict()
    return {
        "names": {"a": names[0], "b": names[1]},
        "n_prompts": len(prompts),
        "n_tokens": n,
        "only_in_a": len(set(a) - set(b)),
        "only_in_b": len(set(b) - set(a)),
        "moved_a": moved_a,
        "moved_b": moved_b,
        "moved_both": both,
        "moved_both_same_token": same,
        **{name: intervals[name] for name in stats},
        "kl_spearman": spearman(kl_a, kl_b),
        "definitions": {
            "moved": "rank_under_base > 1 (the tuned side's argmax is not the base's)",
            "recall_of_b": "moved in both / moved in B",
            "precision_of_b": "moved in both / moved in A",
            "lift": "moved in both / (moved in A * moved in B / tokens); 1 = independent",
            "same_token": "among tokens moved in both, both tuned sides choose the same token",
            "intervals": f"95% percentile bootstrap over prompts, {resamples} resamples, seed {seed}",
        },
    }


def write_overlap(summary: dict[str, Any], out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
