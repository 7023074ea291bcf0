"""scripts/story_client.py as a command against the live server: parameters, progress, downloads,
and the server's validation text with a non-zero exit when the prompt is rejected."""

import json
from pathlib import Path

import pytest

import story_client

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "example_workflows" / "api" / "one_character_story.json"
SMALL = ["--steps", "2", "--width", "64", "--height", "64"]


@pytest.mark.live
def test_cli_queues_with_story_and_seed_and_downloads_the_outputs(live_server, tmp_path, capsys):
    story = tmp_path / "story.txt"
    story.write_text("[Ann]: a girl in a yellow raincoat\n[Ann] jumps in a puddle #Splash!\n[Ann] laughs #Ha")
    out = tmp_path / "out"
    code = story_client.main(
        [
            str(WORKFLOW),
            "--server",
            live_server.url,
            "--story",
            str(story),
            "--seed",
            "99",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    files = sorted(out.iterdir())
    assert [p.name.startswith("panel") for p in files].count(True) == 2  # two panels in the typed story
    assert any(p.name.startswith("comic_page") for p in files)
    assert all(str(p) in stdout for p in files)
    on_server = {p.name for p in (live_server.base / "output" / "story").iterdir()}
    assert {p.name for p in files} <= on_server  # what was downloaded is what the server wrote
    assert "[" in stderr and "2/2" in stderr  # the progress bar, fed by the websocket


@pytest.mark.live
def test_cli_prints_the_servers_validation_error_and_exits_1(live_server, tmp_path, capsys):
    code = story_client.main(
        [
            str(WORKFLOW),
            "--server",
            live_server.url,
            "--story",
            "[Bob]: a man\n[Bob] walks\n[Bbo] runs",
            "--out",
            str(tmp_path),
            *SMALL,
        ]
    )
    _, stderr = capsys.readouterr()
    assert code == 1
    assert "rejected" in stderr and "line 3" in stderr and "[Bbo]" in stderr
    code = story_client.main(
        [
            str(WORKFLOW),
            "--server",
            live_server.url,
            "--ckpt",
            "no_such_model.safetensors",
            "--out",
            str(tmp_path),
            *SMALL,
        ]
    )
    _, stderr = capsys.readouterr()
    assert code == 1 and "no_such_model.safetensors" in stderr and "ckpt_name" in stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_ui_workflows_and_unreachable_servers(tmp_path, capsys):
    assert (
        story_client.main(
            [str(ROOT / "example_workflows" / "one_character_story.json"), "--out", str(tmp_path)]
        )
        == 2
    )
    assert "UI-format" in capsys.readouterr().err
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    assert story_client.main([str(WORKFLOW), "--server", dead, "--out", str(tmp_path)]) == 3
    assert "no ComfyUI answers" in capsys.readouterr().err


def test_parameters_reach_the_right_inputs():
    wf = json.loads(WORKFLOW.read_text())
    p = story_client.apply_parameters(wf, story="[A]: x\n[A] y", seed=5, ckpt="/models/mine.safetensors")
    by_type = {n["class_type"]: n["inputs"] for n in p.values()}
    assert by_type["CheckpointLoaderSimple"] == {"ckpt_name": "mine.safetensors"}
    assert by_type["StoryDiffPrompt"]["story"] == "[A]: x\n[A] y"
    assert by_type["KSampler"]["seed"] == 5 and by_type["KSampler"]["steps"] == 30
    assert by_type["EmptyLatentImage"]["width"] == 1024 and by_type["EmptyLatentImage"]["batch_size"] == [
        "2",
        4,
    ]
    assert wf == json.loads(WORKFLOW.read_text())  # the input is not modified
    same = story_client.apply_parameters(wf)
    assert same == wf
