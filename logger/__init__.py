"""Metric loggers: console JSON lines, Weights & Biases, no-op, and the rank-zero wrapper."""

from logger.base import Logger
from logger.factory import build_logger

__all__ = ["Logger", "build_logger"]
