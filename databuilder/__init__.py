"""Offline dataset writers (legacy memmap and parquet/JSONL; SPEC §1)."""
