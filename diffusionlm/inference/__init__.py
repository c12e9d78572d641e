"""Sampling from masked-diffusion models: the LLaDA block sampler (`generate`), Fast-dLLM
caching and parallel decoding (`cache`), and loading trained runs (`predictor`)."""

from diffusionlm.inference.generate import GenerationResult, StepInfo, generate
from diffusionlm.inference.predictor import Predictor

__all__ = ["GenerationResult", "Predictor", "StepInfo", "generate"]
