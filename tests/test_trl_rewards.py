"""forklens reward functions inside TRL's own GRPOTrainer with conversational (chat-format) data (issue 16)."""

from __future__ import annotations

import pytest

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from forklens.rewards import answer_reward, math_reward  # noqa: E402
from forklens.rewards.metacognition import TaggedGrader, mar_component, mar_reward  # noqa: E402
from forklens.rewards.milestones import milestone_reward  # noqa: E402
from forklens.tasks.dataset import DatasetTask, row_problem, DataColumns  # noqa: E402
from forklens.train.sources import verifier_reward  # noqa: E402
from tests.test_byo_data import model_dir  # noqa: E402,F401  (the byte-level GPT-2 with a chat template)


def test_forklens_rewards_run_in_trl_grpo_with_chat_data(model_dir, tmp_path):  # noqa: F811
    calls = []

    def recorder(prompts, completions, **kw):
        calls.append((prompts, completions, kw))
        return [0.0] * len(completions)

    rows = [{"prompt": [{"role": "user", "content": f"{i}+{i}="}], "answer": str(2 * i),
             "knowledge": [f"{i}+{i}"], "plan": ["add"], "problem": {"prompt": f"{i}+{i}=", "answer": str(2 * i)}}
            for i in range(8)]
    task = DatasetTask([row_problem("row", r, DataColumns(prompt_column="prompt"), i) for i, r in enumerate(rows)])
    trainer = trl.GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[answer_reward, math_reward, mar_reward(TaggedGrader()), mar_component(TaggedGrader(), "kmr"),
                      verifier_reward(task), milestone_reward(), recorder],
        args=trl.GRPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=4,
                            num_generations=4, max_completion_length=6, logging_steps=1, report_to="none",
                            use_cpu=True, save_strategy="no", disable_tqdm=True),
        train_dataset=datasets.Dataset.from_list(rows),
    )
    trainer.train()
    prompts, completions, kw = calls[0]
    assert isinstance(completions[0], list) and completions[0][0]["role"] == "assistant"  # chat format reached us
    assert set(kw) >= {"answer", "knowledge", "plan"}
    logged = {k for h in trainer.state.log_history for k in h}
    for name in ("answer_reward", "mar", "kmr", "data_verifier", "milestones"):
        assert any(k.startswith("rewards/") and name in k for k in logged), (name, sorted(logged))
    # the same functions score TRL's chat completions exactly as forklens scores strings
    chat = [[{"role": "assistant", "content": "\\boxed{4}"}]]
    assert answer_reward(prompts[:1], chat, answer=["4"]) == answer_reward(prompts[:1], ["\\boxed{4}"], answer=["4"]) == [1.0]


def test_task_rewards_read_chat_completions_as_their_text():
    """The bug class of issue 16: a chat-format completion must score what the same string scores."""
    from forklens.tasks.agent import AgentTask

    agent = AgentTask()
    p = next(q for q in agent.problems("test") if q.meta.get("type") == "bridge" and q.meta["depth"] >= 2)
    text = agent.expert_response(p)  # the gold episode as one transcript: every lookup, then the answer
    chat = [[{"role": "assistant", "content": text}]]
    for fn in (verifier_reward(agent), milestone_reward()):
        assert fn([p.prompt], chat, problem=[p]) == fn([p.prompt], [text], problem=[p])
    assert verifier_reward(agent)([p.prompt], chat, problem=[p]) == [1.0]
    assert milestone_reward()([p.prompt], chat, problem=[p]) == [1.0]  # every milestone reached
