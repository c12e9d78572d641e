"""Data: the built-in story corpus and the streaming batch pipeline.

This package's `__init__` stays free of torch and datasets so the tokenizer trainer can import
`diffusionlm.data.corpus` cheaply; import `diffusionlm.data.streaming` for batches.
"""
