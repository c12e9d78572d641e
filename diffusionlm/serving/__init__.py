"""Serving: an OpenAI-compatible HTTP server over the predictor and sampler.

`protocol` (request/response shapes), `text_stream` (final text, stop strings, UTF-8),
`scheduler` (request batching), `engine` (one batch through the sampler), `metrics`
(Prometheus), `app` (the FastAPI application and the canvas page in `static/`).
"""
