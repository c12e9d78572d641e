"""Every TOML shipped in config/resources validates against the schema of the entry point it drives,
so a renamed or retyped setting cannot leave a broken preset behind."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from config.bench_infer import BenchInferConfig
from config.bench_serve import BenchServeConfig
from config.bench_tokenizer import BenchTokenizerConfig
from config.bench_train import BenchTrainConfig
from config.eval import EvalConfig
from config.infer import InferConfig
from config.io import read_toml, resource_path, validate_config
from config.make_data import MakeDataConfig
from config.serve import ServeConfig
from config.train import TrainConfig
from config.train_tokenizer import TrainTokenizerConfig

# File-name prefix -> schema; the longest matching prefix wins (train_tokenizer before train).
SCHEMAS: dict[str, type[BaseModel]] = {
    "bench_infer": BenchInferConfig, "bench_serve": BenchServeConfig, "bench_tokenizer": BenchTokenizerConfig,
    "bench_train": BenchTrainConfig, "eval": EvalConfig, "infer": InferConfig, "make_data": MakeDataConfig,
    "serve": ServeConfig, "train_tokenizer": TrainTokenizerConfig, "train": TrainConfig,
}
SHIPPED = sorted(path.name for path in resource_path("train.toml").parent.glob("*.toml"))


def schema_for(name: str) -> type[BaseModel]:
    prefixes = [prefix for prefix in SCHEMAS if name.removesuffix(".toml").startswith(prefix)]
    assert prefixes, f"{name}: no schema registered for this resource"
    return SCHEMAS[max(prefixes, key=len)]


DOWNLOADED = ("data/", "../shared/")  # scripts/fetch_data.sh's folder, and the shared assets beside a checkout


def downloaded_paths(table: dict) -> list[str]:
    """Every setting of a raw config that names a file outside the package (checked for existence)."""
    found = []
    for value in table.values():
        if isinstance(value, dict):
            found += downloaded_paths(value)
        elif isinstance(value, str) and value.startswith(DOWNLOADED):
            found.append(value)
    return found


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_validates(name, tmp_path, monkeypatch):
    # Presets that name downloaded files are validated where empty stand-ins of those files exist,
    # so the test holds on a machine without them.
    raw = read_toml(resource_path(name))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    for path in downloaded_paths(raw):
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).touch()
    validate_config(schema_for(name), raw, name)


def test_every_resource_is_covered():
    assert "bench_infer_long.toml" in SHIPPED and len(SHIPPED) >= len(SCHEMAS)
