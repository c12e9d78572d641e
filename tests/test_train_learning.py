"""On real text (TinyStories from ../shared/data), the diffusion validation loss falls clearly."""

from __future__ import annotations

import pytest
import torch
from test_train_fixtures import tiny_config

from diffusionlm.training.trainer import build_trainer, run_training

@pytest.mark.slow
def test_diffusion_validation_loss_falls_on_tinystories(tmp_path, shared_data):
    train_file, valid_file = shared_data / "tinystories_train.txt", shared_data / "tinystories_valid.txt"
    torch.set_num_threads(2)
    config = tiny_config(
        tmp_path,
        model={"context_length": 64, "d_model": 64, "num_heads": 2, "d_ff": 192},
        optimizer={"max_learning_rate": 3e-3, "min_learning_rate": 3e-4, "warmup_iters": 10,
                   "cosine_cycle_iters": 150},
        training={"batch_size": 16, "max_train_iteration": 150, "val_freq_iteration": 150, "max_val_iteration": 4,
                  "ckpting_save_iter": 150},
        data={"dataset_name": "text", "data_files": {"train": str(train_file), "validation": str(valid_file)},
              "document_separator": "<|endoftext|>", "shuffle_buffer_size": 256},
    )
    trainer = build_trainer(config)
    initial = trainer.validator.evaluate(trainer.model)["metrics.val_loss"]
    run_training(trainer)
    final = trainer.validator.evaluate(trainer.model)["metrics.val_loss"]
    assert final < initial - 1.0, (initial, final)
