"""A scaffold: what a harness wraps around a prompt before the model sees it.

A *policy* in the broad sense of arXiv 2605.23904 (skill files) and arXiv 2605.27276 (harness vs
weight updates) is a model plus a scaffold. forklens keeps the two apart so that ``forklens diff``
can compare base vs base+skill, base vs RL and base+skill vs RL on the same responses, and ask
whether a skill file moves the tokens RL moves.

A :class:`Scaffold` has a ``skill`` text (e.g. the contents of a ``SKILL.md``, a few worked
examples, rule tokens) and a ``template`` with the placeholders ``{prompt}`` (required) and
``{skill}`` (optional). For a plain-string prompt the template is filled in; when the template has
no ``{skill}``, a non-empty skill goes first, followed by ``separator``. For chat prompts (lists of
messages) the skill becomes a system message (joined to an existing first system message) and the
template is applied to the content of the last user message.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forklens.errors import ConfigError, DataError

__all__ = ["Scaffold", "load_scaffold"]

_FIELDS = {"prompt", "skill"}


@dataclass(frozen=True)
class Scaffold:
    """Skill text + prompt template; the identity scaffold is ``Scaffold()``."""

    skill: str = ""
    template: str = "{prompt}"
    separator: str = "\n"
    skill_source: str | None = None  # the file the skill came from, for reports

    def __post_init__(self) -> None:
        check_template(self.template)

    @property
    def is_identity(self) -> bool:
        return not self.skill and self.template == "{prompt}"

    def apply(self, prompt: str | list[dict]) -> str | list[dict]:
        """The prompt as this scaffold presents it to the model."""
        if isinstance(prompt, str):
            return self._text(prompt)
        if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
            raise DataError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
        messages = [dict(m) for m in prompt]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if self.template != "{prompt}":
            if not users:
                raise DataError("a prompt template needs a user message to apply to; this chat prompt has none")
            last = users[-1]
            messages[last]["content"] = self.template.format(prompt=messages[last].get("content", ""), skill=self.skill)
        if self.skill and "{skill}" not in self.template:
            if messages and messages[0].get("role") == "system":
                messages[0]["content"] = f"{self.skill}{self.separator}{messages[0].get('content', '')}"
            else:
                messages.insert(0, {"role": "system", "content": self.skill})
        return messages

    def _text(self, prompt: str) -> str:
        text = self.template.format(prompt=prompt, skill=self.skill)
        if self.skill and "{skill}" not in self.template:
            text = f"{self.skill}{self.separator}{text}"
        return text

    def describe(self) -> dict[str, Any]:
        """What a report records about the scaffold (the skill's source and size, the template)."""
        return {"skill_file": self.skill_source, "skill_chars": len(self.skill), "template": self.template,
                "identity": self.is_identity}


def check_template(template: str, where: str = "template") -> None:
    """Raise ConfigError unless ``template`` is a format string with ``{prompt}`` and only the
    ``{prompt}`` / ``{skill}`` fields (literal braces are written ``{{`` and ``}}``)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{where} {template!r} is not a valid format string ({exc}); write literal braces "
                          "as {{ and }}") from None
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where} {template!r} has unknown field(s) {', '.join('{' + u + '}' for u in unknown)}; "
                          "only {prompt} and {skill} are filled in")
    if "prompt" not in fields:
        raise ConfigError(f"{where} {template!r} has no {{prompt}} field, so every prompt would be dropped")


def load_scaffold(skill: str | Path | None = None, template: str | None = None, *,
                  separator: str = "\n", what: str = "scaffold") -> Scaffold:
    """A Scaffold from a skill file (UTF-8 text; its trailing newline is kept out) and a template.
    ``what`` names the option in error messages (e.g. ``--rl-skill``)."""
    text, source = "", None
    if skill is not None:
        path = Path(skill)
        if not path.is_file():
            raise ConfigError(f"{what}: {path} is not a file (give the path of a skill text, e.g. SKILL.md)")
        try:
            text = path.read_text(encoding="utf-8").rstrip("\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"{what}: {path} is not UTF-8 text (byte {exc.start})") from None
        if not text.strip():
            raise DataError(f"{what}: {path} is empty")
        source = str(path)
    if template is not None:
        check_template(template, f"{what} template")
    return Scaffold(skill=text, template=template or "{prompt}", separator=separator, skill_source=source)
