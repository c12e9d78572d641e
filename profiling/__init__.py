"""Profiling helpers (NVTX ranges, memory snapshots; SPEC §1)."""
