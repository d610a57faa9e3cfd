"""Run folders: markers, --overwrite removing only what forklens wrote, owned deletes (issue 21)."""

import json

import pytest

from forklens.runfolder import (MARKER, OutputError, claim_folder, install_folder, owned_rmtree, prepare_run_folder,
                                read_marker, record_written)


def test_new_folder_is_marked(tmp_path):
    out = prepare_run_folder(tmp_path / "a" / "run", "train-sft")
    assert read_marker(out)["kind"] == "train-sft" and read_marker(out)["foreign"] == []


def test_overwrite_keeps_user_files_and_removes_only_what_the_run_wrote(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "thesis.txt").write_text("mine")
    prepare_run_folder(out, "train-sft", overwrite=True)
    assert read_marker(out)["foreign"] == ["thesis.txt"]
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "checkpoints").mkdir()
    (out / "odd-output").write_text("x")  # written by the run: recorded at the end
    record_written(out)
    assert read_marker(out)["written"] == ["checkpoints", "metrics.jsonl", "odd-output"]
    with pytest.raises(OutputError, match="already holds a run of kind train-sft"):
        prepare_run_folder(out, "train-sft", resumable=True)
    (out / "notes.md").write_text("added later by the user")
    prepare_run_folder(out, "train-sft", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "notes.md", "thesis.txt"]
    assert (out / "thesis.txt").read_text() == "mine"
    assert read_marker(out)["foreign"] == ["notes.md", "thesis.txt"]


def test_overwrite_of_a_killed_run_removes_known_names_only(tmp_path):
    out = prepare_run_folder(tmp_path / "run", "train-grpo")
    (out / "checkpoints").mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "mine.csv").write_text("1")  # the run never recorded what it wrote (SIGKILL)
    prepare_run_folder(out, "train-grpo", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "mine.csv"]


def test_overwrite_never_removes_an_input(tmp_path):
    out = prepare_run_folder(tmp_path / "run", "train-sft")
    (out / "model").mkdir()
    (out / "model" / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text("{}\n")
    record_written(out)
    prepare_run_folder(out, "train-sft", overwrite=True, inputs=[out / "model"])
    assert (out / "model" / "config.json").exists() and not (out / "metrics.jsonl").exists()


def test_resume_into_same_kind_keeps_everything(tmp_path):
    out = prepare_run_folder(tmp_path / "run", "train-sft")
    (out / "metrics.jsonl").write_text("{}\n")
    record_written(out, finished=False)
    prepare_run_folder(out, "train-sft", resume=True, resumable=True)
    assert (out / "metrics.jsonl").read_text() == "{}\n"


def test_resume_adopts_an_unmarked_run_with_checkpoints(tmp_path):
    out = tmp_path / "old"
    (out / "checkpoints").mkdir(parents=True)
    (out / "notes.txt").write_text("n")
    prepare_run_folder(out, "train-sft", resume=True, resumable=True)
    assert read_marker(out)["foreign"] == ["notes.txt"]


def test_owned_rmtree_refuses_foreign_and_unmarked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "data").mkdir()
    claim_folder(out, "demo")
    with pytest.raises(OutputError, match="before forklens wrote there"):
        owned_rmtree(out / "data")
    (out / "rl_train").mkdir()
    owned_rmtree(out / "rl_train")
    assert not (out / "rl_train").exists() and (out / "data").exists()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(OutputError, match="not in a folder forklens marked"):
        owned_rmtree(tmp_path / "elsewhere")
    (tmp_path / ".x-staging").mkdir()
    owned_rmtree(tmp_path / ".x-staging")  # forklens' own hidden temporary
    assert not (tmp_path / ".x-staging").exists()


def test_install_folder_keeps_user_files_and_refuses_clashes(tmp_path):
    def staging():
        s = tmp_path / ".staging"
        s.mkdir()
        (s / "config.json").write_text(json.dumps({"v": 2}))
        return s

    dst = tmp_path / "victim"
    dst.mkdir()
    (dst / "thesis.txt").write_text("mine")
    install_folder(staging(), dst, "organism")
    assert (dst / "thesis.txt").read_text() == "mine" and (dst / "config.json").exists()
    install_folder(staging(), dst, "organism")  # a rebuild replaces its own files
    assert read_marker(dst)["written"] == ["config.json"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("user's")
    with pytest.raises(OutputError, match="forklens did not write"):
        install_folder(staging(), other, "organism")
    assert (other / "config.json").read_text() == "user's"


def test_organism_build_keeps_user_files(tmp_path, monkeypatch):
    """The issue's case: `organism build --out runs/victim --overwrite` with thesis.txt there (cache hit)."""
    from forklens.cli import main
    from forklens.organisms.arith import OrganismConfig, organism_key

    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cached = tmp_path / "cache" / "organisms" / organism_key(OrganismConfig())
    cached.mkdir(parents=True)
    (cached / "organism.json").write_text(json.dumps({"key": "k", "steps": 0, "wall_s": 0.0}))
    (cached / "config.json").write_text("{}")
    victim = tmp_path / "runs" / "victim"
    victim.mkdir(parents=True)
    (victim / "thesis.txt").write_text("four years")
    assert main(["organism", "build", "--out", "runs/victim", "--overwrite"]) == 0
    assert (victim / "thesis.txt").read_text() == "four years"
    assert (victim / "config.json").exists() and (victim / "organism.json").exists()
    assert main(["organism", "build", "--out", "runs/victim", "--overwrite"]) == 0  # rebuild over its own
    assert (victim / "thesis.txt").read_text() == "four years"
    assert set(read_marker(victim)["written"]) == {"config.json", "organism.json"}


def test_train_sft_cli_marks_resumes_and_overwrites(tmp_path, monkeypatch):
    from forklens.cli import main
    from forklens.train.loop import read_metrics
    from tests.conftest import make_tiny

    monkeypatch.chdir(tmp_path)
    model, tok = make_tiny("llama")
    model.save_pretrained("tiny")
    tok.save_pretrained("tiny")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+1=", "response": f"{i + 1};"}) + "\n"
                                                 for i in range(6)))
    common = ["train", "sft", "--model", "tiny", "--data", "data.jsonl", "--out", "run", "--set", "batch_size=2",
              "--set", "train.save_every=1"]
    assert main(common + ["--set", "train.max_steps=2"]) == 0
    marker = read_marker(tmp_path / "run")
    assert marker["kind"] == "train-sft" and marker["finished"] is True
    assert marker["written"] == ["checkpoints", "metrics.jsonl", "model"]
    assert main(common + ["--set", "train.max_steps=3", "--resume"]) == 0  # continues: steps 1, 2, 3
    assert [m["step"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert main(common + ["--set", "train.max_steps=1", "--overwrite"]) == 0  # a new run: no mixing
    assert [m["step"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step-000001"]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
