"""The FastAPI app: OpenAI-compatible routes over a backend, with the gate and knowledge base in front.

>>> from honed.serve.app import create_app
>>> app = create_app(backend, gate=my_gate, settings=ServeSettings(api_key="k"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from honed.data.conversation import Message
from honed.errors import HonedError
from honed.infer.generate import GenerationSettings
from honed.serve import protocol as P
from honed.serve.backends import Job
from honed.serve.batching import Batcher
from honed.serve.domain import gate_fields
from honed.serve.errors import APIError, BodySizeLimit, check_api_key, error_body, install_error_handlers, parse_json, validation_body
from honed.serve.settings import ServeSettings

log = logging.getLogger("honed.serve")


class Slots:
    """Requests admitted at once (queued or running); one more gets 429 with Retry-After."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self) -> None:
        if self.used >= self.limit:
            raise APIError(429, f"the server is at its limit of {self.limit} concurrent requests; retry shortly",
                           type="rate_limit_error", code="too_many_requests", headers={"Retry-After": "1"})
        self.used += 1

    def give(self) -> None:
        self.used -= 1

    @contextlib.contextmanager
    def admit(self):
        """Hold a slot for the handler; `ticket.keep()` hands it to a streaming response instead."""
        self.take()
        ticket = _Ticket(self)
        try:
            yield ticket
        finally:
            if not ticket.kept:
                self.give()


class _Ticket:
    def __init__(self, slots: Slots):
        self.slots, self.kept = slots, False

    def keep(self):
        """The slot now belongs to the caller, who calls the returned function when done."""
        self.kept = True
        return self.slots.give


def create_app(backend, *, gate=None, kb=None, settings: ServeSettings | None = None, defaults: GenerationSettings | None = None):
    """The server app for `backend`; `gate` and `kb` (see honed.serve.domain) are optional.

    `defaults` holds the sampling settings a request gets for fields it leaves out (greedy unless told).
    """
    settings = settings or ServeSettings()
    defaults = defaults or GenerationSettings(max_new_tokens=settings.default_max_tokens)
    batcher = Batcher(backend, max_batch=settings.max_batch, window_s=settings.batch_window_ms / 1000)
    slots = Slots(settings.max_concurrency)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        log.info("serving %s (%s backend) on http://%s:%d/v1", settings.model_name, backend.name, settings.host, settings.port)
        yield
        await batcher.stop()  # uvicorn has let in-flight requests finish by now
        if hasattr(backend, "close"):
            backend.close()

    app = FastAPI(title="honed", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.state.batcher, app.state.slots = batcher, slots

    async def read(request: Request, model_cls):
        check_api_key(request.headers.get("authorization"), settings.api_key)
        from pydantic import ValidationError

        try:
            body = model_cls.model_validate(parse_json(await request.body()))
        except ValidationError as err:
            detail = validation_body(err.errors())["error"]
            raise APIError(422, detail["message"], code=detail["code"], param=detail["param"]) from None
        if body.model is not None and body.model != settings.model_name:
            raise APIError(404, f"The model '{body.model}' does not exist; this server serves '{settings.model_name}' (see /v1/models)",
                           code="model_not_found", param="model")
        body.refuse_unsupported()
        return body

    def sampling(body) -> GenerationSettings:
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if asked is not None and asked > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens={asked} is over this server's limit of {settings.max_tokens_limit} (--max-tokens-limit)",
                           param="max_tokens", code="max_tokens_too_large")
        chosen = {k: v for k, v in dict(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                                         repetition_penalty=body.repetition_penalty, seed=body.seed).items() if v is not None}
        max_new = asked or min(defaults.max_new_tokens, settings.max_tokens_limit)
        return dataclasses.replace(defaults, max_new_tokens=max_new, **chosen)

    def check_prompt(ids: list[int]) -> None:
        if len(ids) > settings.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens, over this server's limit of {settings.max_prompt_tokens} (--max-prompt-tokens)",
                           param="messages", code="context_length_exceeded")

    def gate_check(question: str) -> tuple[dict, str | None]:
        """(the decision's fields, the refusal when out of domain)."""
        decision = gate.check(question)
        fields = gate_fields(decision)
        if decision.in_domain:
            log.info("gate: in domain (score %.3f, threshold %.3f)", fields["score"], fields["threshold"])
            return fields, None
        log.info("gate: out of domain (score %.3f < threshold %.3f): answered with the refusal", fields["score"], fields["threshold"])
        return fields, gate.refusal_for(question)

    async def generate(job: Job):
        """Run one non-streaming job within the request timeout (504 after it)."""
        future = batcher.submit(job)
        try:
            return await asyncio.wait_for(asyncio.shield(future), settings.request_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            job.cancelled.set()
            raise APIError(504, f"generation took longer than the request timeout of {settings.request_timeout_s:g} s",
                           type="timeout_error", code="timeout") from None

    def stream_job(job: Job, first: dict | None, delta_chunk, final_chunks, release):
        """SSE events of a job: `first` (if any), one per text delta, then `final_chunks(result)`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job.on_delta = lambda reasoning, text: loop.call_soon_threadsafe(queue.put_nowait, (reasoning, text))
        future = batcher.submit(job)
        future.add_done_callback(lambda _: queue.put_nowait(None))
        deadline = loop.time() + settings.request_timeout_s

        async def events():
            try:
                if first is not None:
                    yield sse(first)
                while (item := await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))) is not None:
                    yield sse(delta_chunk(*item))
                for chunk in final_chunks(future.result()):
                    yield sse(chunk)
            except (asyncio.TimeoutError, TimeoutError):
                yield sse(error_body(f"generation took longer than the request timeout of {settings.request_timeout_s:g} s", "timeout_error", "timeout"))
            except Exception as err:  # the stream has started: report in-band, as OpenAI does
                log.exception("streaming generation failed")
                yield sse(error_body(f"internal error: {type(err).__name__}: {err}", "server_error", "internal_error"))
            finally:
                job.cancelled.set()  # a client that went away stops its row
                release()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "backend": backend.name, "in_flight": slots.used,
                "batches": batcher.batches_run, "rows": batcher.rows_run, "generating_s": round(batcher.busy_s, 3)}

    @app.get("/v1/models")
    async def models(request: Request):
        check_api_key(request.headers.get("authorization"), settings.api_key)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": int(time.time()), "owned_by": "honed"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read(request, P.ChatRequest)
        with slots.admit() as ticket:
            messages = [Message("system" if m.role == "developer" else m.role, m.text(f"messages.{i}.content"), m.reasoning_content)
                        for i, m in enumerate(body.messages)]
            if settings.system_prompt and messages[0].role != "system":
                messages.insert(0, Message("system", settings.system_prompt))
            question = next((m.content for m in reversed(messages) if m.role == "user"), "")
            gen = sampling(body)
            stops = body.stop_strings()
            honed, refusal = {}, None
            if gate is not None:
                honed["gate"], refusal = await asyncio.to_thread(gate_check, question)
            if refusal is None:
                if kb is not None:
                    messages, honed["citations"] = await asyncio.to_thread(kb.augment, messages, question)
                thinking = (body.chat_template_kwargs or {}).get("enable_thinking", gen.enable_thinking)
                try:
                    ids = backend.chat_prompt(messages, thinking)
                except HonedError as err:
                    raise APIError(400, str(err), param="messages") from None
                check_prompt(ids)
            cid, created = P.new_id("chatcmpl"), int(time.time())
            if refusal is not None:
                if body.stream:
                    return stream_static([
                        P.chat_chunk(cid, settings.model_name, created, {"role": "assistant", "content": ""}, honed=honed),
                        P.chat_chunk(cid, settings.model_name, created, {"content": refusal}),
                        P.chat_chunk(cid, settings.model_name, created, {}, "stop")], ticket.keep())
                return P.chat_completion(cid, settings.model_name, refusal, None, "stop", P.usage(0, 0), honed)
            job = Job(ids, gen, stops, chat=True)
            if not body.stream:
                r = await generate(job)
                honed.update(refusal_fields(r))
                return P.chat_completion(cid, settings.model_name, r.text, r.reasoning, r.finish_reason, P.usage(len(ids), r.new_tokens), honed or None)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            def delta(reasoning, text):
                d = {"content": text} if text else {}
                if reasoning:
                    d["reasoning_content"] = reasoning
                return P.chat_chunk(cid, settings.model_name, created, d)

            def final(r):
                # P(refuse) is known once the row has run, so it rides on the finishing chunk
                # (the gate decision and citations, known before, ride on the first).
                yield P.chat_chunk(cid, settings.model_name, created, {}, r.finish_reason, honed=refusal_fields(r) or None)
                if include_usage:
                    yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": settings.model_name,
                           "choices": [], "usage": P.usage(len(ids), r.new_tokens)}

            first = P.chat_chunk(cid, settings.model_name, created, {"role": "assistant", "content": ""}, honed=honed or None)
            return stream_job(job, first, delta, final, ticket.keep())

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read(request, P.CompletionRequest)
        with slots.admit() as ticket:
            gen, stops = sampling(body), body.stop_strings()
            prompts = body.prompts()
            cid, created = P.new_id("cmpl"), int(time.time())
            answers: list = [None] * len(prompts)
            decisions = []
            for i, prompt in enumerate(prompts):
                if gate is not None:
                    fields, refusal = await asyncio.to_thread(gate_check, prompt)
                    decisions.append(fields)
                    if refusal is not None:
                        answers[i] = (refusal, "stop", 0)
            honed = {"gate": decisions[0] if len(prompts) == 1 else decisions} if decisions else None
            jobs = {}
            for i, prompt in enumerate(prompts):
                if answers[i] is None:
                    ids = backend.text_prompt(prompt)
                    check_prompt(ids)
                    jobs[i] = (Job(ids, gen, stops, chat=False), len(ids))
            if body.stream:
                if not jobs:
                    text = answers[0][0]
                    return stream_static([P.text_completion(cid, settings.model_name, [(text, "stop")], None, honed)], ticket.keep())
                job, n_prompt = jobs[0]

                def delta(reasoning, text):
                    return {"id": cid, "object": "text_completion", "created": created, "model": settings.model_name,
                            "choices": [{"index": 0, "text": text, "finish_reason": None, "logprobs": None}]}

                def final(r):
                    yield {"id": cid, "object": "text_completion", "created": created, "model": settings.model_name,
                           "choices": [{"index": 0, "text": "", "finish_reason": r.finish_reason, "logprobs": None}]}
                    if body.stream_options and body.stream_options.include_usage:
                        yield {"id": cid, "object": "text_completion", "created": created, "model": settings.model_name,
                               "choices": [], "usage": P.usage(n_prompt, r.new_tokens)}

                return stream_job(job, None, delta, final, ticket.keep())
            results = await asyncio.gather(*(generate(job) for job, _ in jobs.values()))
            n_prompt = n_new = 0
            for (i, (job, n)), r in zip(jobs.items(), results):
                answers[i] = (r.text, r.finish_reason, r.new_tokens)
                n_prompt += n
            n_new = sum(a[2] for a in answers)
            return P.text_completion(cid, settings.model_name, [(a[0], a[1]) for a in answers], P.usage(n_prompt, n_new), honed)

    def stream_static(chunks: list[dict], release):
        """An SSE response of ready chunks (a refusal), then [DONE]."""
        async def events():
            try:
                for chunk in chunks:
                    yield sse(chunk)
                yield "data: [DONE]\n\n"
            finally:
                release()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def refusal_fields(result) -> dict:
    """`{"refusal_probability": p}` for a row run with --refusal-calibration, else `{}`."""
    p = getattr(result, "refusal_probability", None)
    return {} if p is None else {"refusal_probability": round(p, 6)}


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
