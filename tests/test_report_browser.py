"""The diff report in a real browser: headless Chromium driven by Playwright.

Needs the ``playwright`` Python package and a Chromium binary (Debian: ``apt-get install -y chromium``;
``FORKLENS_CHROMIUM`` overrides the path). Skips with a reason when either is missing. Screenshots go
to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROB = re.compile(r"^\d+(\.\d+)?%$|^\d(\.\d)?e-\d+%$")


def _chromium() -> str | None:
    for cand in (os.environ.get("FORKLENS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary found (apt-get install -y chromium, or set FORKLENS_CHROMIUM)")
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # a browser that cannot start here is an environment problem
            pytest.skip(f"Chromium at {exe} did not start: {exc}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from forklens.analysis.diff import run_diff
    from forklens.policy import Policy
    from forklens.organisms.base import build_char_tokenizer

    root = tmp_path_factory.mktemp("browser")
    tok = build_char_tokenizer("abcdefghij0123456789 +=;<>&\"'\n")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=gen))
    model.save_pretrained(root / "rl")
    tok.save_pretrained(root / "rl")
    prompts = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "id": f"sum-{a}-{b}"}
               for a, b in [(1, 2), (3, 4), (5, 5), (7, 1), (2, 9)]]
    prompts.append({"prompt": "<b>&amp;\"quoted\"\n", "id": "<script>"})
    summary = run_diff(Policy.load(root / "base"), Policy.load(root / "rl"), prompts, max_new_tokens=40,
                       out_dir=root / "out")
    assert summary["reranked_frac"] > 0
    return root / "out" / "report.html"


def test_report_in_chromium(browser, report):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))

    def route(r):
        requests.append(r.request.url)
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    assert errors == []
    assert all(u.startswith("file://") for u in requests), requests  # works offline: nothing else is fetched
    assert page.locator("svg.chart").count() == 2
    assert page.title().startswith("forklens diff")

    # keyboard: Tab reaches a token and shows its tooltip
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('tok')"):
            break
    else:
        pytest.fail("no token became focused with Tab")
    assert page.locator("#tip").is_visible()
    assert page.evaluate("document.activeElement.getAttribute('aria-describedby')") == "tip"
    assert page.evaluate("document.activeElement.getAttribute('aria-label')").startswith("token ")
    page.keyboard.press("Escape")
    assert page.locator("#tip").is_hidden()
    page.keyboard.press("Enter")  # tokens are toggle buttons for their tooltip
    assert page.locator("#tip").is_visible()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.classList.contains('tok')")
    assert page.locator("#tip").is_visible()

    # a reranked token, focused: the tooltip lists 5 base and 5 RL candidates with probabilities
    tok = page.locator(".tok.c-reranked[data-i]").first
    tok.focus()
    tip = page.locator("#tip")
    assert tip.is_visible()
    assert "reranked" in tip.inner_text()
    rows = tip.locator("tbody tr")
    assert rows.count() == 5
    probs = tip.locator("td.prob").all_inner_texts()
    assert len(probs) == 10 and all(PROB.match(p) for p in probs), probs
    cands = [t for t in tip.locator("td.cand").all_inner_texts()]
    assert len(cands) == 10 and all(cands)
    assert tip.locator(".is-rl").count() >= 2  # the RL token is highlighted in the base list and RL list
    page.screenshot(path=str(ARTIFACTS / "diff-report-tooltip.png"))

    # hover works too, and n jumps to the next disagreement
    page.locator(".tok.c-unshifted[data-i]").first.hover()
    assert "unshifted" in tip.inner_text()
    tok.focus()
    page.keyboard.press("n")
    assert page.evaluate("!document.activeElement.classList.contains('c-unshifted')")

    # nasty text stays text: the prompt id '<script>' is shown, not executed
    assert page.get_by_text("<script>", exact=True).count() >= 1
    assert page.locator("script").count() == 2
    data = json.loads(page.locator("#forklens-data").text_content())
    assert len(data["tokens"]) == page.locator(".tok[data-i]").count()
    page.screenshot(path=str(ARTIFACTS / "diff-report-full.png"), full_page=True)
    assert errors == []
    page.close()


def test_unicode_tokens_in_chromium(browser, tmp_path):
    """Byte-level BPE: the page shows the response's characters (no U+FFFD anywhere), a fragment token's
    tooltip shows its bytes as \\xNN, and every token and candidate shows its id."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from forklens.analysis.diff import run_diff
    from forklens.policy import Policy
    from tests.test_token_texts import TEXT, bpe as bpe_fixture

    tok = bpe_fixture.__wrapped__()
    torch.manual_seed(0)
    dirs = []
    for name, scale in (("base", 20.0), ("rl", 26.0)):
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                           eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        dirs.append(tmp_path / name)
    out = tmp_path / "diff"
    run_diff(Policy.load(dirs[0]), Policy.load(dirs[1]), [{"id": "u", "prompt": TEXT}], max_new_tokens=24,
             out_dir=out, progress=False, responses="rl-greedy")
    page = browser.new_page()
    page.goto((out / "report.html").as_uri())
    body = page.locator("body").inner_text()
    i = body.find("\ufffd")
    assert i < 0, body[max(0, i - 200):i + 50]
    assert page.locator("pre.prompt").first.text_content() == TEXT  # the prompt, shown whole
    rows = [json.loads(x) for x in (out / "tokens.jsonl").read_text(encoding="utf-8").splitlines()]
    running = "".join(page.locator(".tok[data-i]").all_inner_texts())
    assert "\ufffd" not in running and len(page.locator(".tok[data-i]").all_inner_texts()) == len(rows)
    frag = next((i for i, r in enumerate(rows) if "\\x" in r["token_text"]), None)
    target = page.locator(f'.tok[data-i="{frag if frag is not None else 0}"]')
    target.focus()
    tip = page.locator("#tip").inner_text()
    assert f"id {rows[frag or 0]['token_id']}" in tip and "\ufffd" not in tip
    if frag is not None:
        assert rows[frag]["token_text"] in tip
    assert all("#" in c for c in page.locator("#tip td.cand").all_inner_texts())
    page.close()
