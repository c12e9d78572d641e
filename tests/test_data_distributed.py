"""Two real gloo processes read a single-file dataset: disjoint rows whose union is the dataset."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_data_streaming import ROWS, jsonl_config, make_batches, rows_of, write_jsonl

from ddp.launch import free_port

WALL_LIMIT_S = 180  # the whole two-process run, rendezvous included
GROUP_TIMEOUT = timedelta(seconds=60)  # any one rendezvous or collective


def _read_rank_rows(rank: int, world_size: int, address: str, folder: str) -> None:
    """One rank: join the gloo group, stream its share, all-gather every rank's rows to rank 0."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=rank, world_size=world_size,
                            timeout=GROUP_TIMEOUT)
    try:
        config = jsonl_config(Path(folder) / "d.jsonl", mode="pad", shuffle_buffer_size=8)
        batches = make_batches(config, context_length=16, batch_size=1, loop=False,
                               rank=dist.get_rank(), world_size=dist.get_world_size())
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, rows_of(batches))
        if rank == 0:
            (Path(folder) / "rows.json").write_text(json.dumps(gathered), encoding="utf-8")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_read_disjoint_rows_covering_the_file(tmp_path, loopback):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    address = f"{loopback}:{free_port(loopback)}"
    ranks = mp.spawn(_read_rank_rows, args=(2, address, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + WALL_LIMIT_S
    try:
        while not ranks.join(timeout=1):  # re-raises a rank's exception
            assert time.monotonic() < deadline, f"the gloo ranks did not finish within {WALL_LIMIT_S} s"
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.kill()
    per_rank = json.loads((tmp_path / "rows.json").read_text(encoding="utf-8"))
    assert all(per_rank)
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(ROWS)
