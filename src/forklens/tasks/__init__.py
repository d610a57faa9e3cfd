"""Tasks: problems + exact verifiers. Built-in organisms are registered by name."""

from __future__ import annotations

from forklens.errors import ConfigError
from forklens.tasks.addv import AddvTask
from forklens.tasks.agent import AgentTask
from forklens.tasks.agent_explore import ExploreAgentTask
from forklens.tasks.arith import ArithTask
from forklens.tasks.base import Problem, Task
from forklens.tasks.compose import ComposeTask
from forklens.tasks.facts import FactsTask
from forklens.tasks.lengths import LengthsTask
from forklens.tasks.reduce import ReduceTask
from forklens.tasks.rules import RulesTask
from forklens.tasks.shortcut import ShortcutTask
from forklens.tasks.sort import SortTask
from forklens.tasks.steer import SteerTask

TASKS = {"arith", "agent", "addv", "lengths", "shortcut", "steer", "facts", "compose", "sort", "reduce", "rules",
         "agent-explore"}


def get_task(name: str, config=None) -> Task:
    if name == "arith":
        return ArithTask(config)
    if name == "agent":
        return AgentTask(config)
    if name == "addv":
        return AddvTask(config)
    if name == "lengths":
        return LengthsTask(config)
    if name == "shortcut":
        return ShortcutTask(config)
    if name == "steer":
        return SteerTask(config)
    if name == "facts":
        return FactsTask(config)
    if name == "compose":
        return ComposeTask(config)
    if name == "sort":
        return SortTask(config)
    if name == "reduce":
        return ReduceTask(config)
    if name == "rules":
        return RulesTask(config)
    if name == "agent-explore":
        return ExploreAgentTask(config)
    raise ConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")


__all__ = ["Problem", "Task", "get_task", "TASKS"]
