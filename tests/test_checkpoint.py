"""Checkpoint files: safe loading, corruption handling, keep-last-N, atomic writes, export."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_fixtures import tiny_config, write_tiny_toml

from cli.train import main as train_main
from diffusionlm.diffusion.forward_process import NoiseGenerators
from diffusionlm.errors import InputError
from diffusionlm.training.rng import capture_rng_state, restore_rng_state
from diffusionlm.training.trainer import build_trainer, run_training
from diffusionlm.utils.checkpoint import (
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    remove_unfinished_saves,
    save_checkpoint,
)
from diffusionlm.utils.run_layout import checkpoint_path, list_checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (checkpoints at steps 8 and 12 kept) and its config file."""
    root = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    config_path = write_tiny_toml(root / "tiny.toml", root / "runs", training={"skip_validation": True})
    assert train_main(["--config", str(config_path)]) == 0
    return root / "runs" / "tiny", config_path


def _payload(step: int) -> dict:
    return {"format_version": 1, "step": step, "model": {"w": torch.full((2,), float(step))}, "optimizer": {0: {}},
            "scheduler_step": step, "rng": {}, "data": {0: {}}, "config": {"model": {}}, "metrics": {}}


def test_checkpoint_loads_with_weights_only_including_rng_and_loader_state(finished_run):
    run_dir, _ = finished_run
    checkpoint = torch.load(list_checkpoints(run_dir)[-1], weights_only=True)
    assert checkpoint["step"] == 12 and checkpoint["scheduler_step"] == 12
    assert isinstance(checkpoint["rng"]["numpy"]["keys"], list)
    assert set(checkpoint["rng"]) == {"python", "numpy", "torch", "cuda", "noise", "noise_device"}
    assert checkpoint["data"][0]["rows_consumed"] > 0
    assert set(checkpoint["optimizer"]) == {0}
    assert checkpoint["config"]["model"]["d_model"] == 32
    assert all(t.dtype == torch.float32 for t in checkpoint["model"].values())


def test_keep_last_n_keeps_only_the_newest_checkpoints(finished_run):
    run_dir, _ = finished_run
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000008.pt", "step_00000012.pt"]


def test_prune_deletes_oldest_first(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(checkpoint_path(tmp_path, step), _payload(step))
    removed = prune_checkpoints(tmp_path, keep_last_n=1)
    assert [p.name for p in removed] == ["step_00000001.pt", "step_00000002.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt"]


def test_prune_never_deletes_the_save_just_made_when_newer_stale_files_exist(tmp_path):
    # Resumed from step 2 while an abandoned continuation left step 9 behind.
    for step in (1, 2, 9):
        save_checkpoint(checkpoint_path(tmp_path, step), _payload(step))
    save_checkpoint(checkpoint_path(tmp_path, 3), _payload(3))
    removed = prune_checkpoints(tmp_path, keep_last_n=1, newest_step=3)
    assert [p.name for p in removed] == ["step_00000001.pt", "step_00000002.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000009.pt"]


def test_failed_write_leaves_no_partial_file_and_the_old_checkpoint_intact(tmp_path):
    path = checkpoint_path(tmp_path, 5)
    save_checkpoint(path, _payload(5))
    before = path.read_bytes()
    unpicklable = _payload(5) | {"metrics": {"bad": (i for i in range(3))}}  # generators cannot be pickled
    with pytest.raises(TypeError, match="pickle"):
        save_checkpoint(path, unpicklable)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_truncated_checkpoint_is_an_input_error_naming_the_file(tmp_path):
    path = checkpoint_path(tmp_path, 3)
    save_checkpoint(path, _payload(3))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=str(path)):
        load_checkpoint(path)


def test_latest_with_corrupt_newest_names_it_and_the_previous_good_one(tmp_path):
    good, bad = checkpoint_path(tmp_path, 1), checkpoint_path(tmp_path, 2)
    save_checkpoint(good, _payload(1))
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError) as err:
        load_latest_checkpoint(tmp_path)
    assert str(bad) in str(err.value) and f"--resume {good}" in str(err.value)
    assert load_checkpoint(good)["step"] == 1


def flip_a_byte_inside_a_tensor(path) -> None:
    """Invert one byte in the middle of the first tensor record's data, as a failing disk would."""
    with zipfile.ZipFile(path) as archive:
        record = next(info for info in archive.infolist() if "/data/" in info.filename and info.file_size >= 8)
    with open(path, "r+b") as handle:
        handle.seek(record.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        position = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
        handle.seek(position)
        byte = handle.read(1)[0]
        handle.seek(position)
        handle.write(bytes([byte ^ 0xFF]))


def test_a_flipped_byte_inside_a_tensor_is_refused_naming_the_newest_good_checkpoint(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(checkpoint_path(tmp_path, step), _payload(step))
    flip_a_byte_inside_a_tensor(checkpoint_path(tmp_path, 3))
    flip_a_byte_inside_a_tensor(checkpoint_path(tmp_path, 2))
    with pytest.raises(InputError) as err:
        load_latest_checkpoint(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{checkpoint_path(tmp_path, 3)}: corrupt checkpoint: checksum mismatch in record")
    assert message.endswith(f"the newest good checkpoint is {checkpoint_path(tmp_path, 1)} "
                            f"(pass it explicitly: --resume {checkpoint_path(tmp_path, 1)})")


def test_resume_from_a_checkpoint_with_a_flipped_byte_exits_2(finished_run, tmp_path, capsys):
    run_dir, config_path = finished_run
    older, newest = list_checkpoints(run_dir)
    flipped = tmp_path / "checkpoints" / newest.name
    flipped.parent.mkdir()
    flipped.write_bytes(newest.read_bytes())
    flip_a_byte_inside_a_tensor(flipped)
    assert train_main(["--config", str(config_path), "--resume", str(flipped)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flipped}: corrupt checkpoint: checksum mismatch" in err
    assert f"there is no other good checkpoint in {flipped.parent}" in err


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("content", ["random bytes", "a pickled callable"])
def test_unloadable_checkpoint_never_suggests_weights_only_false(tmp_path, content):
    path = checkpoint_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    if content == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        torch.save(_payload(1) | {"metrics": {"x": RunsCode()}}, path)
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)
    if content == "a pickled callable":
        assert "refused: the file holds Python objects that are not tensors or plain data" in str(err.value)


def test_unfinished_saves_are_removed_and_only_they(tmp_path):
    save_checkpoint(checkpoint_path(tmp_path, 1), _payload(1))
    folder = checkpoint_path(tmp_path, 1).parent
    unfinished = [folder / ".step_00000002.pt.abc123.tmp", folder / ".step_00000003.pt.x_y.tmp"]
    for path in unfinished:
        path.write_bytes(b"\0" * 100)
    other = folder / ".notes.txt.abc.tmp"
    other.write_text("not a checkpoint save")
    assert sorted(remove_unfinished_saves(tmp_path)) == unfinished
    assert sorted(p.name for p in folder.iterdir()) == [".notes.txt.abc.tmp", "step_00000001.pt"]


def test_resume_from_corrupt_checkpoint_exits_2_and_keeps_the_previous_one(finished_run, tmp_path, capsys):
    run_dir, config_path = finished_run
    older, newest = list_checkpoints(run_dir)
    corrupt = tmp_path / "step_00000012.pt"
    corrupt.write_bytes(newest.read_bytes()[:1000])
    older_bytes = older.read_bytes()
    assert train_main(["--config", str(config_path), "--resume", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(corrupt) in err and "corrupt or truncated" in err
    assert older.read_bytes() == older_bytes


def test_resume_latest_before_the_first_checkpoint_starts_the_run_with_a_notice(tmp_path, capsys):
    config_path = write_tiny_toml(tmp_path / "tiny.toml", tmp_path / "runs",
                                  training={"skip_validation": True, "max_train_iteration": 4})
    (tmp_path / "runs" / "tiny").mkdir(parents=True)  # killed before its first save: config.toml, no checkpoint
    assert train_main(["--config", str(config_path), "--resume", "latest"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"--resume latest: {tmp_path / 'runs' / 'tiny'} has no checkpoint yet; starting the run "
                          f"from the beginning\n")
    assert [p.name for p in list_checkpoints(tmp_path / "runs" / "tiny")] == ["step_00000004.pt"]


def test_finished_run_resumed_after_its_export_was_deleted_names_its_final_checkpoint(finished_run, tmp_path,
                                                                                     capsys):
    run_dir, config_path = finished_run
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / run_dir.name)
    shutil.rmtree(runs / run_dir.name / "export")
    assert train_main(["--config", str(config_path), "--set", f"checkpoint.runs_path={json.dumps(str(runs))}",
                       "--resume", "latest"]) == 0
    err = capsys.readouterr().err
    assert f"final checkpoint: {runs / run_dir.name / 'checkpoints' / 'step_00000012.pt'}\n" in err
    assert (runs / run_dir.name / "export" / "model.safetensors").is_file()


def test_checkpoint_from_another_model_config_is_rejected_naming_the_field(finished_run):
    run_dir, _ = finished_run
    config = tiny_config(run_dir.parent, model={"d_model": 64})
    with pytest.raises(InputError, match="model.d_model"):
        build_trainer(config, resume=str(run_dir))


def test_fresh_run_refuses_a_run_directory_that_already_has_checkpoints(finished_run):
    run_dir, _ = finished_run
    with pytest.raises(InputError, match="--resume latest"):
        build_trainer(tiny_config(run_dir.parent))


def test_exported_safetensors_match_the_final_checkpoint(finished_run):
    run_dir, _ = finished_run
    exported = load_file(run_dir / "export" / "model.safetensors")
    final = load_checkpoint(list_checkpoints(run_dir)[-1])["model"]
    assert exported.keys() == final.keys()
    assert all(torch.equal(exported[k], final[k]) for k in final)
    config = json.loads((run_dir / "export" / "config.json").read_text())
    assert config["format_version"] == 1 and config["model"]["d_model"] == 32


def test_resume_restores_numpy_and_python_random_streams(finished_run, tmp_path):
    run_dir, _ = finished_run
    trainer = build_trainer(tiny_config(run_dir.parent), resume=str(list_checkpoints(run_dir)[0]))
    trainer.train_batches.close()
    saved = load_checkpoint(list_checkpoints(run_dir)[0])["rng"]
    assert np.random.get_state()[1].tolist() == saved["numpy"]["keys"]
    assert torch.equal(trainer.noise_generator.host.get_state(), saved["noise"])
    assert torch.equal(trainer.noise_generator.device.get_state(), saved["noise_device"])
    assert trainer.state.iteration == 8


def test_noise_state_from_another_device_type_is_a_clear_error():
    noise = NoiseGenerators.seeded(0, torch.device("cpu"))
    state = capture_rng_state(noise)
    state["noise_device"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator's state
    with pytest.raises(InputError, match="another device type"):
        restore_rng_state(state, noise)


def test_resume_keeps_the_optimizer_state_but_uses_the_new_optimizer_settings(finished_run):
    run_dir, _ = finished_run
    checkpoint_file = list_checkpoints(run_dir)[-1]
    config = tiny_config(run_dir.parent, optimizer={"max_learning_rate": 1e-3, "cosine_cycle_iters": 80})
    trainer = build_trainer(config, resume=str(checkpoint_file))
    trainer.train_batches.close()
    assert {group["max_lr"] for group in trainer.optimizer.param_groups} == {1e-3}
    saved = load_checkpoint(checkpoint_file)["optimizer"][0]["state"]
    restored = trainer.optimizer.state_dict()["state"]
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[i]["exp_avg"], restored[i]["exp_avg"]) for i in saved)


def test_resume_with_another_optimizer_exits_2_naming_the_checkpoint(finished_run, capsys):
    run_dir, config_path = finished_run
    assert train_main(["--config", str(config_path), "--resume", "latest", "--set", "optimizer.optimizer_name=\"muon\""]) == 2
    err = capsys.readouterr().err
    assert "parameter groups" in err and str(list_checkpoints(run_dir)[-1]) in err


def test_resume_at_the_end_trains_nothing_and_keeps_the_final_checkpoint(finished_run):
    run_dir, _ = finished_run
    before = {p.name: p.read_bytes() for p in list_checkpoints(run_dir)}
    config = tiny_config(run_dir.parent, training={"skip_validation": True})
    result = run_training(build_trainer(config, resume="latest"))
    assert result.state.iteration == 12
    assert {p.name: p.read_bytes() for p in list_checkpoints(run_dir)} == before
