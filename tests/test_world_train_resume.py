"""The story world trainer resumes bit-exactly: stopped and resumed (inside the VAE stage and inside the
UNet stage) it writes the same weights as an uninterrupted run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--decoder-steps",
    "2",
    "--vae-steps",
    "3",
    "--unet-steps",
    "3",
    "--vae-batch",
    "2",
    "--batch",
    "2",
    "--ckpt-minutes",
    "100",
]


def train(work: Path, *extra) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train_world_model.py"),
        *TINY,
        "--work",
        str(work),
        "--out",
        str(work / "model.safetensors"),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_interrupted_and_resumed_training_gives_identical_weights(tmp_path):
    whole = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    parts = tmp_path / "parts"
    first = train(parts, "--stop-after", "2")  # inside the VAE stage
    assert first.returncode == 0 and "stopped" in first.stdout and not (parts / "model.safetensors").exists()
    second = train(parts, "--resume", "--stop-after", "2")  # last VAE step + first UNet step
    assert second.returncode == 0 and "resumed at stage vae step 2" in second.stdout, second.stdout[-2000:]
    third = train(parts, "--resume")
    assert third.returncode == 0 and "resumed at stage unet step 1" in third.stdout, third.stdout[-2000:]
    a = safetensors.torch.load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = safetensors.torch.load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys() and {k[:4] for k in a} == {"unet", "clip", "vae."}
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == []


@pytest.mark.slow
def test_resume_may_change_the_steps_of_stages_not_begun(tmp_path):
    """Stopped inside the VAE stage and resumed with another --unet-steps, the weights and the recorded
    command are those of a fresh run with that value; changing a begun stage's argument is refused."""
    fresh = train(tmp_path / "fresh", "--unet-steps", "2")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    parts = tmp_path / "parts"
    assert train(parts, "--stop-after", "2").returncode == 0  # --unet-steps 3 (TINY) at the start
    refused = train(parts, "--resume", "--vae-steps", "4")
    assert refused.returncode != 0 and "--vae-steps changed" in refused.stderr, refused.stderr[-2000:]
    resumed = train(parts, "--resume", "--unet-steps", "2")
    assert resumed.returncode == 0 and "new arguments for stages not begun: unet_steps" in resumed.stdout
    a = safetensors.torch.load_file(str(tmp_path / "fresh" / "model.safetensors"))
    b = safetensors.torch.load_file(str(parts / "model.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    with safetensors.safe_open(str(parts / "model.safetensors"), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
    assert info["unet_steps"] == 2 and "--unet-steps 2" in info["command"]


@pytest.mark.slow
def test_a_rescheduled_stage_records_the_commands_that_reproduce_it(tmp_path):
    """--reschedule changes the step count of the stage under way; the recorded command (each run stopped
    where the next one rescheduled, then the last) run afresh gives the same weights."""
    first = tmp_path / "first"
    assert train(first, "--stop-after", "4").returncode == 0  # 3 VAE steps + 1 UNet step of 3
    refused = train(first, "--resume", "--unet-steps", "2")
    assert refused.returncode != 0 and "--unet-steps changed" in refused.stderr
    mid = train(first, "--resume", "--unet-steps", "5", "--reschedule", "--stop-after", "1")
    assert mid.returncode == 0 and "rescheduled: unet_steps 3 -> 5" in mid.stdout, mid.stderr[-2000:]
    resumed = train(first, "--resume", "--unet-steps", "4", "--reschedule")  # twice: a chain of three
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rescheduled: unet_steps 5 -> 4" in resumed.stdout
    with safetensors.safe_open(str(first / "model.safetensors"), framework="pt") as f:
        command = json.loads(f.metadata()["info"])["command"]
    again = tmp_path / "again"
    for part in command.split(" && "):
        words = part.split()
        assert words[0] == "scripts/train_world_model.py"
        run = train(again, *words[1:])
        assert run.returncode == 0, run.stderr[-2000:]
    a = safetensors.torch.load_file(str(first / "model.safetensors"))
    b = safetensors.torch.load_file(str(again / "model.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
