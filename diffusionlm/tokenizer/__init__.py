"""Byte-level BPE: train it (`train_bpe`), load it (`load_tokenizer`), use it.

Torch-free on purpose: tokenizer training and data workers import this package alone.
"""

from diffusionlm.tokenizer.bpe_trainer import train_bpe
from diffusionlm.tokenizer.io import load_tokenizer, save_tokenizer
from diffusionlm.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer", "load_tokenizer", "save_tokenizer", "train_bpe"]
