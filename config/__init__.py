"""Typed configuration: Pydantic v2 schemas (one per entry point) and TOML I/O."""

from config.io import dump_config, load_config, resource_path

__all__ = ["dump_config", "load_config", "resource_path"]
