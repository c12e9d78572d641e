"""The config contract shared by every entry point: TOML, --set overrides, one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ConfigDict

from cli.utils import EXIT_INPUT, EXIT_OK, EXIT_RUNTIME, run_cli
from config.io import apply_override, dump_config, load_config, write_config
from config.schemas import ModelConfig, OptimizerConfig, Section, TrainingConfig
from diffusionlm.errors import InputError


class DemoConfig(Section):
    model_config = ConfigDict(extra="forbid")

    model: ModelConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    training: TrainingConfig


MODEL = """
[model]
vocab_size = 512
context_length = 64
d_model = 64
num_layers = 2
num_heads = 4
d_ff = 172
mask_token_id = 511
eot_token_id = 510

[training]
batch_size = 4
max_train_iteration = 10
"""


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "demo.toml"
    path.write_text(MODEL)
    return path


def test_load_applies_defaults_and_types(config_file):
    cfg = load_config(DemoConfig, config_file)
    assert cfg.model.d_model == 64 and cfg.optimizer.optimizer_name == "adamw"
    assert cfg.training.noise_epsilon == pytest.approx(1e-3)


def test_override_parses_toml_values(config_file):
    cfg = load_config(DemoConfig, config_file, ["optimizer.max_learning_rate=1e-3", "optimizer.betas=[0.8, 0.9]",
                                                "model.causal=true", "optimizer.muon.hidden.momentum=0.9"])
    assert cfg.optimizer.max_learning_rate == pytest.approx(1e-3)
    assert cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.model.causal is True
    assert cfg.optimizer.muon.hidden.momentum == pytest.approx(0.9)


def test_override_null_unsets_an_optional_field_and_is_rejected_for_a_required_one(config_file, tmp_path):
    init = tmp_path / "weights.safetensors"
    cfg = load_config(DemoConfig, config_file, [f"training.init_from={str(init)!r}", "training.init_from=null"])
    assert cfg.training.init_from is None
    quoted = load_config(DemoConfig, config_file, ['training.init_from="null"'])
    assert quoted.training.init_from == Path("null")
    with pytest.raises(InputError, match=r"training\.batch_size: .*got None"):
        load_config(DemoConfig, config_file, ["training.batch_size=null"])


def test_override_of_a_missing_key_names_it(config_file):
    with pytest.raises(InputError, match=r"--set optimizer\.max_lr: no key 'max_lr' in optimizer"):
        load_config(DemoConfig, config_file, ["optimizer.max_lr=1"])


def test_override_without_equals_is_rejected():
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        apply_override({}, DemoConfig, "model.d_model")


def test_unknown_key_error_names_file_and_field(config_file):
    config_file.write_text(MODEL.replace("d_ff = 172", "d_ff = 172\ndff = 3"))
    with pytest.raises(InputError) as err:
        load_config(DemoConfig, config_file)
    assert str(err.value) == f"{config_file}: model.dff: unknown key"


def test_wrong_type_error_names_field_and_value(config_file):
    with pytest.raises(InputError, match=r"training\.batch_size: .*got 'many'"):
        load_config(DemoConfig, config_file, ["training.batch_size=many"])


def test_cross_field_checks(config_file):
    with pytest.raises(InputError, match="divisible by num_heads"):
        load_config(DemoConfig, config_file, ["model.num_heads=3"])
    with pytest.raises(InputError, match="must be even"):
        load_config(DemoConfig, config_file, ["model.d_model=12", "model.num_heads=4"])
    with pytest.raises(InputError, match="cosine_cycle_iters"):
        load_config(DemoConfig, config_file, ["optimizer.warmup_iters=100", "optimizer.cosine_cycle_iters=100"])
    with pytest.raises(InputError, match=r"mask_token_id \(600\) must be < vocab_size"):
        load_config(DemoConfig, config_file, ["model.mask_token_id=600"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(DemoConfig, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(InputError, match="invalid TOML"):
        load_config(DemoConfig, bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[model]")
    with pytest.raises(InputError, match="not valid UTF-8"):
        load_config(DemoConfig, binary)


def test_resolved_config_round_trips(config_file, tmp_path):
    cfg = load_config(DemoConfig, config_file, ["model.rope_theta=500000.0"])
    out = tmp_path / "run" / "config.toml"
    write_config(cfg, out)
    assert load_config(DemoConfig, out) == cfg
    assert tomllib.loads(dump_config(cfg))["model"]["rope_theta"] == 500000.0


def _run_demo(argv, capsys, run=lambda cfg, args: None):
    code = run_cli(run, DemoConfig, prog="demo", argv=argv)
    return code, capsys.readouterr()


def test_cli_print_config(config_file, capsys):
    code, out = _run_demo(["--config", str(config_file), "--print-config", "--set", "model.num_layers=3"], capsys)
    assert code == EXIT_OK
    assert tomllib.loads(out.out)["model"]["num_layers"] == 3


def test_cli_bad_input_is_one_line_exit_2(config_file, capsys):
    code, out = _run_demo(["--config", str(config_file), "--set", "model.nope=1"], capsys)
    assert code == EXIT_INPUT
    assert out.err.count("\n") == 1 and "Traceback" not in out.err
    assert out.err.startswith("demo: error: --set model.nope")


def test_cli_runtime_failure_is_exit_1_without_traceback(config_file, capsys):
    def boom(cfg, args):
        raise RuntimeError("disk on fire")

    code, out = _run_demo(["--config", str(config_file)], capsys, run=boom)
    assert code == EXIT_RUNTIME
    assert "disk on fire" in out.err and "Traceback" not in out.err


def test_cli_debug_shows_traceback(config_file, capsys):
    def bad(cfg, args):
        raise InputError("prompt too long")

    code, out = _run_demo(["--config", str(config_file), "--debug"], capsys, run=bad)
    assert code == EXIT_INPUT and "Traceback" in out.err and "prompt too long" in out.err
