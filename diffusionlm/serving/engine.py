"""Turn a request into sampler rows, and run a batch of them as one sampler call.

`make_rows` does every check that could make the sampler refuse a batch, per request, so one
bad request is a 400 for its own client and never fails its neighbours. `BatchRunner` runs on
the sampler thread; it reports to each job through events:

- ("text", index, text, finish_reason): newly final text of choice `index` (finish_reason set
  on its last piece);
- ("canvas", index, step, pieces): the whole generated span after a step, one string per
  token, None for a masked position (only for `stream_canvas` jobs);
- ("done", stats) after the call; ("error", APIError) if it failed.
"""

from __future__ import annotations

import logging
import secrets

from diffusionlm.errors import InputError
from diffusionlm.inference.generate import StepInfo
from diffusionlm.inference.predictor import Predictor
from diffusionlm.inference.sampling import check_threshold_remasking, plan_blocks
from diffusionlm.serving.metrics import ServerMetrics
from diffusionlm.serving.protocol import APIError, CompletionRequest, SamplerSettings
from diffusionlm.serving.scheduler import Job, Row
from diffusionlm.serving.text_stream import CompletionText

logger = logging.getLogger(__name__)
_SEED_MASK = 2**64 - 1  # torch seeds are unsigned 64-bit


def make_rows(predictor: Predictor, request: CompletionRequest, settings: SamplerSettings) -> tuple[list[Row], int]:
    """The request's sequences (prompt x n, OpenAI's choice order) and its prompt token count."""
    inference, gen_length = settings.inference, settings.gen_length
    mask_id, context = predictor.config.mask_token_id, predictor.config.context_length
    encoded = [predictor.tokenizer.encode(prompt) for prompt in request.prompts()]
    for ids in encoded:
        if len(ids) + gen_length > context:
            raise APIError(400, f"the prompt is {len(ids)} tokens and max_tokens is {gen_length}: together they "
                                f"exceed the model's context of {context} tokens", param="prompt",
                           code="context_length_exceeded")
        if mask_id in ids:
            raise APIError(400, "the prompt contains the mask token <|mask|>; prompts must be plain text",
                           param="prompt")
    try:
        plan_blocks(0, gen_length, inference.block_length, inference.steps)
    except InputError as err:
        raise APIError(400, str(err).replace("inference.", ""), param="steps") from None
    try:
        check_threshold_remasking(inference.threshold, inference.remasking)
    except InputError as err:
        raise APIError(400, str(err).replace("inference.", ""), param="threshold") from None
    base = request.seed if request.seed is not None else secrets.randbits(63)
    rows = [Row(p * request.n + i, ids, (base + p * request.n + i) & _SEED_MASK)
            for p, ids in enumerate(encoded) for i in range(request.n)]
    return rows, sum(map(len, encoded))


class _Abandoned(Exception):
    """Every client of the batch has gone: stop sampling."""


class BatchRunner:
    """Runs batches of jobs with equal settings through `Predictor.sample_ids` (sampler thread)."""

    def __init__(self, predictor: Predictor, metrics: ServerMetrics) -> None:
        self.predictor, self.metrics = predictor, metrics

    def __call__(self, jobs: list[Job]) -> None:
        try:
            stats, used = self._run(jobs)
        except _Abandoned:
            return
        except InputError as err:
            self._fail(jobs, APIError(400, str(err)))
            return
        except Exception as err:  # noqa: BLE001 - reported to the clients, logged for the operator
            logger.exception("sampler call failed")
            self._fail(jobs, APIError(500, f"{type(err).__name__}: {err}", type="server_error"))
            return
        for job in jobs:
            job.emit(("done", stats | {"completion_tokens": used[job.id]}))

    @staticmethod
    def _fail(jobs: list[Job], error: APIError) -> None:
        for job in jobs:
            job.emit(("error", error))

    def _run(self, jobs: list[Job]) -> tuple[dict, dict[int, int]]:
        """Sample the batch, stream its text; return the call's stats and each job's token count."""
        predictor, settings = self.predictor, jobs[0].settings
        rows = [(job, row) for job in jobs for row in job.rows]
        encoded = [row.prompt_ids for _, row in rows]
        width = max(map(len, encoded))
        inference = settings.inference.model_copy(update={"total_length": width + settings.gen_length})
        mask_id, vocab = predictor.mask_id(inference), predictor.tokenizer.vocab
        eos_id = predictor.eos_id(inference) if inference.stop_at_eos else None
        texts = [CompletionText(vocab, stop=job.stop, eos_id=eos_id) for job, _ in rows]
        final = [0] * len(rows)  # tokens of each row already handed to its CompletionText

        def publish(r: int, tokens: list[int], end: bool) -> None:
            job, row = rows[r]
            text = texts[r].feed(tokens[final[r]:])
            final[r] = len(tokens)
            if end:
                text += texts[r].finish()
            if (text or texts[r].finished) and not job.cancelled:
                job.emit(("text", row.index, text, texts[r].finish_reason))

        live = [r for r, (job, _) in enumerate(rows) if job.stream]

        def on_step(info: StepInfo) -> None:
            if all(job.cancelled for job in jobs):
                raise _Abandoned
            if not live:
                return
            canvas = info.canvas[:, width:].tolist()
            for r in live:
                job, row = rows[r]
                if job.cancelled:
                    continue
                tokens = canvas[r]
                if not texts[r].finished:
                    publish(r, tokens[:tokens.index(mask_id)] if mask_id in tokens else tokens, end=False)
                if job.stream_canvas:
                    pieces = [None if t == mask_id else vocab[t].decode("utf-8", errors="replace") for t in tokens]
                    job.emit(("canvas", row.index, info.step, pieces))

        sample = predictor.sample_ids(encoded, inference, on_step, seeds=[row.seed for _, row in rows])
        result = sample.result
        for r, tokens in enumerate(result.tokens[:, width:].tolist()):
            publish(r, tokens, end=True)
        self.metrics.nfe.inc(result.nfe)
        self.metrics.tokens_per_forward.set(result.tokens_per_forward)
        stats = {"nfe": result.nfe, "tokens_per_forward": round(result.tokens_per_forward, 4),
                 "sampler_latency_ms": round(sample.latency_s * 1000, 3), "batch_size": len(rows)}
        used: dict[int, int] = {}
        for r, (job, _) in enumerate(rows):
            used[job.id] = used.get(job.id, 0) + texts[r].tokens
        self.metrics.completion_tokens.inc(sum(used.values()))
        return stats, used
