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
    write = workflow("identity_bank_write.json")  # its own SD1.5 bank: bob_bank may hold the Flux one
    write["9"]["inputs"]["name"] = "bob_bank_sd15"
    run_prompt(live_server, write, timeout=600)
    prompt["8"]["inputs"]["bank_file"] = "bob_bank_sd15.safetensors"
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


# ---- every Identity Bank Write option through files and a fresh server ------------------------
OPTIONS = {  # each option away from the full bank, and the defaults (no option given)
    "steps": dict(bank_steps=2, bank_keep_rate=0.0, precision="fp16"),
    "keep_rate": dict(bank_steps=0, bank_keep_rate=0.25, precision="fp16"),
    "int8": dict(bank_steps=0, bank_keep_rate=0.0, precision="int8"),
    "cond_only": dict(bank_steps=0, bank_keep_rate=0.0, precision="fp16", guidance_halves="cond only"),
    "interpolate": dict(bank_steps=2, bank_keep_rate=0.0, precision="fp16", between_steps="interpolate"),
    "default": dict(),
}


def options_workflows(steps=4):
    """Server 1: per option a write run, Save Identity Bank and a read run fed by the bank object.
    Server 2: per option Load Identity Bank and the same read run."""
    write, read = workflow("identity_bank_write.json", steps), workflow("identity_bank_read.json", steps)
    read["2"]["inputs"]["negative"] = "blurry, low quality"  # guidance halves that differ
    base = {k: write[k] for k in ("1", "7", "2", "3")}
    base["2"] = dict(base["2"], inputs=dict(base["2"]["inputs"], negative="blurry, low quality"))
    first, second = dict(base), {k: read[k] for k in ("1", "7", "2", "3")}
    first.update(
        {"rp": dict(read["2"]), "rl": dict(read["3"], inputs=dict(read["3"]["inputs"], batch_size=["rp", 4]))}
    )
    for o, opts in OPTIONS.items():
        first[f"w{o}"] = dict(write["8"], inputs=dict(write["8"]["inputs"], **opts))
        first[f"s{o}"] = dict(write["9"], inputs=dict(bank=[f"w{o}", 1], name=f"bob_{o}"))
        read_inputs = dict(read["9"]["inputs"], bank=[f"w{o}", 1], story=["rp", 2])
        first[f"r{o}"] = dict(read["9"], inputs=read_inputs)
        first[f"rk{o}"] = dict(
            read["4"],
            inputs=dict(
                read["4"]["inputs"],
                model=[f"r{o}", 0],
                positive=["rp", 0],
                negative=["rp", 1],
                latent_image=["rl", 0],
            ),
        )
        first[f"rs{o}"] = dict(read["10"], inputs=dict(samples=[f"rk{o}", 0], filename_prefix=f"latents/{o}"))
        second[f"l{o}"] = dict(read["8"], inputs=dict(bank_file=f"bob_{o}.safetensors"))
        second[f"r{o}"] = dict(read["9"], inputs=dict(read["9"]["inputs"], bank=[f"l{o}", 0]))
        second[f"rk{o}"] = dict(read["4"], inputs=dict(read["4"]["inputs"], model=[f"r{o}", 0]))
        second[f"rs{o}"] = dict(
            read["10"], inputs=dict(samples=[f"rk{o}", 0], filename_prefix=f"latents/{o}")
        )
    return first, second


def test_every_write_option_round_trips_write_save_load_in_a_fresh_server_read(live_server):
    from safetensors import safe_open

    first, second = options_workflows()
    entry = run_prompt(live_server, first, timeout=900)
    in_memory = {o: saved_latent(live_server, entry, f"rs{o}") for o in OPTIONS}
    files = {
        o: Path(live_server.base) / "output" / "identity_banks" / f"bob_{o}.safetensors" for o in OPTIONS
    }
    for o in OPTIONS:
        text = " ".join(entry["outputs"][f"s{o}"]["text"])
        assert "MiB per identity image" in text and "on disk" in text, text
        assert "MiB per identity image" in " ".join(entry["outputs"][f"w{o}"]["text"])  # shown on Write too
        with safe_open(str(files[o]), framework="pt") as f:
            meta = f.metadata()
        assert meta["family"] == "SD15" and json.loads(meta["settings"])["precision"] == OPTIONS[o].get(
            "precision", "int8"
        )
    assert len({files[o].read_bytes() for o in OPTIONS}) == len(OPTIONS)  # each option stores something else
    base = Path(tempfile.mkdtemp(prefix="story-test-fresh-"))
    try:
        (base / "output" / "identity_banks").mkdir(parents=True)
        for f in files.values():
            shutil.copy(f, base / "output" / "identity_banks" / f.name)
        (base / "output" / "identity_banks" / "broken.safetensors").write_bytes(b"\xff" * 64)
        from comfy_host import ComfyServer

        with ComfyServer(base, with_tiny_models=True) as fresh:
            entry2 = run_prompt(fresh, second, timeout=900)
            from_file = {o: saved_latent(fresh, entry2, f"rs{o}") for o in OPTIONS}
            broken = workflow("identity_bank_read.json")
            broken["8"]["inputs"]["bank_file"] = "broken.safetensors"
            with pytest.raises(PromptFailed) as e:
                run_prompt(fresh, broken, timeout=300)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert "Load Identity Bank" in str(e.value) and "broken.safetensors" in str(e.value)
    assert "SafetensorError" not in str(e.value)
    for o in OPTIONS:
        assert from_file[o].shape == (3, 4, 8, 8) and torch.equal(from_file[o], in_memory[o]), o
    # at 4 steps the default (int8, 5 steps) records every step a read uses: it reads as the int8 option
    assert torch.equal(in_memory["default"], in_memory["int8"])
    others = [o for o in OPTIONS if o != "default"]
    assert len({in_memory[o].numpy().tobytes() for o in others}) == len(
        others
    )  # each option reads differently
