"""diffusionlm: masked-diffusion language models (LLaDA-style) in PyTorch, from scratch."""

__version__ = "0.1.0"
