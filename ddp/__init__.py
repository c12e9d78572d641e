"""Data-parallel training (SPEC §8). The training loop already synchronises gradients through one
seam, `diffusionlm.training.grad_sync`, which is where a data-parallel wrapper plugs in."""
