"""CSA and the identity bank in a real headless ComfyUI, through POST /prompt."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from story_client import PromptFailed, run_prompt

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "example_workflows" / "api"


def workflow(name, steps=2, size=64, folder=API, family="sd15"):
    """An example workflow made quick: 2 steps, 64 px, the tiny SD1.5-shaped model (fewest layers)
    or the tiny Flux.1 model (`family="flux"`, the same nodes on a DiT)."""
    prompt = json.loads((folder / name).read_text())
    for node in prompt.values():
        if node["class_type"] == "StoryTestTinyCheckpoint":
            node["inputs"]["family"] = family
        if node["class_type"] in ("KSampler", "StoryDiffIdentityBankWriteSample"):
            node["inputs"]["steps"] = steps
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=size, height=size)
    return prompt


def saved_latent(server, entry, node_id) -> torch.Tensor:
    info = entry["outputs"][node_id]["latents"][0]
    path = Path(server.base) / "output" / info["subfolder"] / info["filename"]
    return load_file(str(path))["latent_tensor"]


def write_then_read_in_memory(family="sd15"):
    """The write workflow plus the read workflow fed by the write run's bank object (no file)."""
    prompt = workflow("identity_bank_write.json", family=family)
    shared = {"1": "1", "7": "7"}
    read = workflow("identity_bank_read.json", family=family)
    rename = {k: shared.get(k, "r" + k) for k in read}
    for k, node in read.items():
        if node["class_type"] == "StoryDiffLoadIdentityBank" or k in shared:
            continue
        inputs = {n: ([rename[v[0]], v[1]] if isinstance(v, list) else v) for n, v in node["inputs"].items()}
        if node["class_type"] == "StoryDiffIdentityBankRead":
            inputs.update(
                bank=["8", 1]
            )  # plain dataflow: the write node has sampled when it returns the bank
        prompt[rename[k]] = dict(node, inputs=inputs)
    return prompt


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_bank_round_trip_write_save_load_in_a_fresh_server(live_server, family):
    entry = run_prompt(live_server, write_then_read_in_memory(family), timeout=600)
    assert entry["status"]["status_str"] == "success"
    in_memory = saved_latent(live_server, entry, "r10")
    bank_file = Path(live_server.base) / "output" / "identity_banks" / "bob_bank.safetensors"
    assert bank_file.is_file()

    base = Path(tempfile.mkdtemp(prefix="story-test-fresh-"))
    try:
        (base / "output" / "identity_banks").mkdir(parents=True)
        shutil.copy(bank_file, base / "output" / "identity_banks" / bank_file.name)
        from comfy_host import ComfyServer

        with ComfyServer(base, with_tiny_models=True) as fresh:
            entry2 = run_prompt(fresh, workflow("identity_bank_read.json", family=family), timeout=600)
            assert entry2["status"]["status_str"] == "success"
            from_file = saved_latent(fresh, entry2, "10")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert from_file.shape == in_memory.shape == (3, 16 if family == "flux" else 4, 8, 8)
    assert torch.equal(from_file, in_memory)


def test_reading_a_character_the_bank_lacks_fails_with_a_clear_message(live_server):
    prompt = workflow("identity_bank_read.json")
    if not (Path(live_server.base) / "output" / "identity_banks" / "bob_bank.safetensors").is_file():
        run_prompt(live_server, workflow("identity_bank_write.json"), timeout=600)
    prompt["2"]["inputs"]["story"] = "[Ann]: a woman with red hair\n[Ann] walks along the sea"
    with pytest.raises(PromptFailed) as e:
        run_prompt(live_server, prompt, timeout=300)
    assert "Identity Bank Read" in str(e.value) and "[Ann]" in str(e.value)


def test_a_workflow_saved_before_the_fractions_and_the_sampling_write_node_runs_as_before(live_server):
    """The write workflow as saved by release 0.1 (CSA end_percent 100, the patch-only write node,
    a KSampler, the bank saved after its LATENT) writes the same bank and images as today's."""
    from safetensors.torch import load_file as load_bank

    old = workflow("identity_bank_write_v0.json", folder=ROOT / "tests" / "legacy_workflows")
    assert (
        old["7"]["inputs"]["end_percent"] == 100.0 and old["8"]["class_type"] == "StoryDiffIdentityBankWrite"
    )
    old["9"]["inputs"]["name"] = "bob_bank_v0"
    old["10"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["4", 0], "filename_prefix": "latents/write_v0"},
    }
    new = workflow("identity_bank_write.json")
    new["9"]["inputs"]["name"] = "bob_bank_now"
    new["10"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["8", 0], "filename_prefix": "latents/write_now"},
    }
    entries = [run_prompt(live_server, p, timeout=600) for p in (old, new)]
    assert [e["status"]["status_str"] for e in entries] == ["success", "success"]
    assert torch.equal(
        saved_latent(live_server, entries[0], "10"), saved_latent(live_server, entries[1], "10")
    )
    banks = [
        load_bank(str(Path(live_server.base) / "output" / "identity_banks" / f"bob_bank_{v}.safetensors"))
        for v in ("v0", "now")
    ]
    assert banks[0].keys() == banks[1].keys() and all(torch.equal(banks[0][k], banks[1][k]) for k in banks[0])
