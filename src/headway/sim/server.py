"""HTTP surface of one simulated replica: OpenAI endpoints, vLLM's worker endpoints,
the SGLang-style endpoints the Rust routers probe, debug and fault-admin endpoints."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from headway import __version__
from headway.core.engine import RequestError
from headway.core.sequence import EngineRequest
from headway.core.tokenizer import ChatTemplate
from headway.openai_errors import ApiError, decode_json_object, error_response
from headway.resources.tokenizer import HfTokenizer
from headway.sim import clock, trace
from headway.sim.completions import (
    CompletionWriter,
    RequestState,
    StreamDropped,
    TextAssembler,
)
from headway.sim.config import SimConfig
from headway.sim.faults import FaultConfigError
from headway.sim.metrics import ReplicaCounters, ReplicaMetrics
from headway.sim.protocol import ParsedRequest, parse_completion, render_chat
from headway.sim.replica import Replica

log = logging.getLogger(__name__)

VLLM_VERSION = "0.32.0"  # the vLLM release whose API and wire formats are simulated

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(obj), status=status, content_type="application/json"
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an OpenAI-style JSON error, never a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.param)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, f"request body too large: {exc.text}")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.reason or "error")
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal simulator error")


class ReplicaServer:
    """aiohttp application for one replica."""

    def __init__(
        self,
        replica: Replica,
        config: SimConfig,
        tokenizer: HfTokenizer,
        template: ChatTemplate,
        kv_event_sources: dict[str, Any] | None,
        on_crash: Callable[[ReplicaServer], None],
        timer: clock.SimTimer | None = None,
    ) -> None:
        self.replica = replica
        self._timer = timer  # for the front end's waits (asyncio.sleep without one)
        self.config = config
        self.tokenizer = tokenizer
        self.template = template
        self.kv_event_sources = kv_event_sources
        self._on_crash = on_crash
        self.counters = ReplicaCounters(num_requests_success={})
        engine = replica.engine
        self.cache_info = {
            "block_size": str(engine.config.block_size),
            "gpu_memory_utilization": str(config.gpu_memory_utilization),
            "cache_dtype": "fp8"
            if "kvfp8" in config.precision or config.precision in ("fp8", "fp4")
            else "auto",
            "num_gpu_blocks_override": str(config.num_gpu_blocks_override),
            "enable_prefix_caching": str(engine.config.enable_prefix_caching),
            "prefix_caching_hash_algo": "sha256_cbor",
            "num_gpu_blocks": str(engine.config.num_gpu_blocks),
            "num_cpu_blocks": "0",
        }
        self.metrics = ReplicaMetrics(engine, config.names[0], self.cache_info, self.counters)
        replica.on_queue_time = self.metrics.observe_queue
        self._token_text_cache: dict[int, str] = {}
        self._assembler = TextAssembler(self._token_text, tokenizer.eos_token_id)
        self.writer = CompletionWriter(
            replica,
            self._assembler,
            config.enable_prompt_tokens_details,
            self.metrics.observe_ttft,
            self.metrics.observe_itl,
        )
        self.active_requests: dict[int, web.Request] = {}
        self.crashed = False
        self.started_at = int(time.time())

    def _token_text(self, token_id: int) -> str:
        text = self._token_text_cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._token_text_cache[token_id] = text
        return text

    # -- app --------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[error_middleware], client_max_size=self.config.max_body_bytes
        )
        r = app.router
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_post("/v1/completions", self.completions)
        r.add_get("/v1/models", self.models)
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.metrics_handler)
        r.add_get("/version", self.version)
        r.add_get("/load", self.load)
        r.add_post("/tokenize", self.tokenize)
        r.add_post("/detokenize", self.detokenize)
        r.add_get("/kv_event_sources", self.kv_sources)
        r.add_post("/v1/chat/completions/render", self.chat_render)
        r.add_post("/v1/completions/render", self.completions_render)
        r.add_post("/reset_prefix_cache", self.reset_prefix_cache)
        r.add_get("/debug/cache", self.debug_cache)
        r.add_get("/debug/timing", self.debug_timing)
        r.add_get("/admin/faults", self.get_faults)
        r.add_post("/admin/faults", self.set_faults)
        for path in ("/get_server_info", "/server_info"):
            r.add_get(path, self.server_info)
        for path in ("/get_model_info", "/model_info"):
            r.add_get(path, self.model_info)
        r.add_get("/get_load", self.get_load)
        return app

    # -- completions ------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, is_chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, is_chat=False)

    def _check_model(self, model: str) -> None:
        if model not in self.config.names:
            raise ApiError(404, f"The model `{model}` does not exist.", "model")

    async def _complete(self, request: web.Request, is_chat: bool) -> web.StreamResponse:
        received_at = clock.now()
        if trace.ON:
            trace.ev("h0", self.replica.index)
        faults = self.replica.faults
        if faults.config.hang:
            await asyncio.Event().wait()  # until the client gives up
        data = decode_json_object(await request.read())
        parsed = parse_completion(
            data, is_chat=is_chat, tokenizer=self.tokenizer, template=self.template
        )
        self._check_model(parsed.model)
        if faults.count_request():
            # Not yet in active_requests: cut this connection too. The response
            # cannot be sent; aiohttp drops it quietly.
            if request.transport is not None:
                request.transport.abort()
            self.crash()
            return web.Response(status=503)
        if faults.should_error():
            self.counters.num_injected_errors += 1
            raise ApiError(500, "injected fault: internal server error")

        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        max_len = self.replica.engine.config.max_model_len
        n_prompt = len(parsed.prompt_token_ids)
        max_tokens = parsed.max_tokens if parsed.max_tokens is not None else max_len - n_prompt
        if n_prompt + max_tokens > max_len or max_tokens < 1:
            raise ApiError(
                400,
                f"This model's maximum context length is {max_len} tokens. However, you "
                f"requested {n_prompt + max(max_tokens, 1)} tokens ({n_prompt} in the messages, "
                f"{max(max_tokens, 1)} in the completion). Please reduce the length of the "
                "messages or completion.",
                "max_tokens" if parsed.max_tokens is not None else "messages",
            )
        engine_request = EngineRequest(
            request_id=request_id,
            prompt_token_ids=parsed.prompt_token_ids,
            max_tokens=max_tokens,
            ignore_eos=parsed.ignore_eos,
            stop_token_ids=parsed.stop_token_ids,
            cache_salt=parsed.cache_salt,
            priority=parsed.priority,
        )
        front_end_at = await self._front_end(received_at)
        try:
            handle = self.replica.submit(engine_request)
        except RequestError as exc:
            status = 409 if "already in the engine" in str(exc) else 400
            raise ApiError(status, str(exc)) from None
        if trace.ON:
            trace.ev("h1", self.replica.index)
        prefix = "chatcmpl-" if is_chat else "cmpl-"
        state = RequestState(parsed, prefix + request_id, int(time.time()), parsed.model)
        state.front_end_at = front_end_at
        drop_after = faults.config.drop_stream_after_tokens
        self.active_requests[id(request)] = request
        resp: web.StreamResponse | None = None
        try:
            if parsed.stream:
                sink = self.writer.attach_stream(handle, state, drop_after)
                resp = self.writer.open_stream(handle)
                await self.writer.stream(request, resp, sink)
            else:
                resp = await self.writer.whole(handle, state, drop_after)
        except (StreamDropped, ConnectionResetError):
            # The client went away (or a fault cut it off): free the sequence now and
            # end quietly; aiohttp ignores a response it cannot send.
            self._abort(request_id)
            if request.transport is not None:
                request.transport.abort()
            return resp if resp is not None else web.Response(status=499)
        except BaseException:
            # Handler cancelled (client gone while waiting) or a bug: never leak the
            # sequence's blocks.
            self._abort(request_id)
            raise
        finally:
            self.active_requests.pop(id(request), None)
        reason = state.finish_reason or "abort"
        self.counters.num_requests_success[reason] = (
            self.counters.num_requests_success.get(reason, 0) + 1
        )
        now = clock.now()
        self.metrics.observe_e2e(now - state.arrived_at(handle))
        if handle.scheduled_at is not None and handle.first_token_at is not None:
            self.metrics.observe_prefill(handle.first_token_at - handle.scheduled_at)
            self.metrics.observe_decode(now - handle.first_token_at)
        if trace.ON:
            trace.ev("e1", self.replica.index)
        return resp

    async def _front_end(self, received_at: float) -> float | None:
        """The modeled API server's latency (`--api-overhead-ms`, model time) from
        `received_at`, before the engine gets the request; returns `received_at`, or
        None without a front end (the request goes to the engine at once)."""
        overhead_s = self.config.api_overhead_s
        if overhead_s <= 0:
            return None
        due = received_at + overhead_s / self.replica.time_scale
        if self._timer is not None:
            await self._timer.sleep_until(due, is_deadline=False)
        else:
            await asyncio.sleep(max(0.0, due - clock.now()))
        return received_at

    def _abort(self, request_id: str) -> None:
        seq = self.replica.engine.sequence(request_id)
        if seq is None:
            self.replica.release(request_id)
            return
        freed = self.replica.abort(request_id)
        self.counters.num_aborted_requests += 1
        self.counters.num_aborted_freed_blocks += freed

    def crash(self) -> None:
        """Die as a process would: stop serving and cut every open connection."""
        if self.crashed:
            return
        self.crashed = True
        for req in list(self.active_requests.values()):
            if req.transport is not None:
                req.transport.abort()
        self._on_crash(self)

    # -- other OpenAI / vLLM endpoints -------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": self.started_at,
                "owned_by": "vllm",
                "root": self.config.model,
                "parent": None,
                "max_model_len": self.replica.engine.config.max_model_len,
                "permission": [],
            }
            for name in self.config.names
        ]
        return _json({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        if self.replica.faults.config.hang:
            await asyncio.Event().wait()
        return web.Response(status=200)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(request.query.getall("name[]", ())),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": VLLM_VERSION, "headway_sim": __version__})

    async def load(self, request: web.Request) -> web.Response:
        return _json({"server_load": self.replica.num_in_flight})

    async def tokenize(self, request: web.Request) -> web.Response:
        data = decode_json_object(await request.read())
        if "messages" in data:
            text = render_chat(data, self.template, bool(data.get("add_generation_prompt", True)))
        else:
            prompt = data.get("prompt")
            if not isinstance(prompt, str):
                raise ApiError(400, "prompt: field required (a string), or messages", "prompt")
            text = prompt
        if data.get("model") is not None:
            self._check_model(str(data["model"]))
        tokens = self.tokenizer.encode(text)
        token_strs = None
        if data.get("return_token_strs"):
            token_strs = [self.tokenizer.id_to_token(t) for t in tokens]
        return _json(
            {
                "count": len(tokens),
                "max_model_len": self.replica.engine.config.max_model_len,
                "tokens": tokens,
                "token_strs": token_strs,
            }
        )

    async def detokenize(self, request: web.Request) -> web.Response:
        data = decode_json_object(await request.read())
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ApiError(400, "tokens: must be a list of integers", "tokens")
        return _json({"prompt": self.tokenizer.decode(tokens)})

    def _generate_request(
        self, request_id: str, parsed: ParsedRequest, data: dict[str, Any]
    ) -> dict[str, Any]:
        """vLLM's `GenerateRequest` (scale-out render output) for a parsed request."""
        sampling: dict[str, Any] = {
            "stop": list(parsed.stop),
            "stop_token_ids": sorted(parsed.stop_token_ids),
            "bad_words": [],
            "skip_reading_prefix_cache": False,
        }
        if parsed.max_tokens is not None:
            sampling["max_tokens"] = parsed.max_tokens
        if parsed.ignore_eos:
            sampling["ignore_eos"] = True
        return {
            "request_id": request_id,
            "token_ids": list(parsed.prompt_token_ids),
            "token_offsets": None,
            "features": None,
            "content_parts": None,
            "sampling_params": sampling,
            "model": parsed.model,
            "reasoning_ended": None,
            "reasoning_parser_kwargs": None,
            "return_token_ids": None,
            "output_mode": "tokens",
            "stream": parsed.stream,
            "stream_options": data.get("stream_options"),
            "cache_salt": parsed.cache_salt,
            "priority": parsed.priority,
            "kv_transfer_params": data.get("kv_transfer_params"),
            "ec_transfer_params": None,
        }

    async def _render(self, request: web.Request, is_chat: bool) -> dict[str, Any]:
        data = decode_json_object(await request.read())
        parsed = parse_completion(
            data, is_chat=is_chat, tokenizer=self.tokenizer, template=self.template
        )
        self._check_model(parsed.model)
        base = request.headers.get("x-request-id") or uuid.uuid4().hex
        prefix = "chatcmpl-" if is_chat else "cmpl-"
        return self._generate_request(prefix + base, parsed, data)

    async def chat_render(self, request: web.Request) -> web.Response:
        return _json(await self._render(request, is_chat=True))

    async def completions_render(self, request: web.Request) -> web.Response:
        # One GenerateRequest per prompt, as a list (the simulator takes one prompt).
        return _json([await self._render(request, is_chat=False)])

    async def kv_sources(self, request: web.Request) -> web.Response:
        return _json(self.kv_event_sources or {})

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        # vLLM answers 200 {"success": false} while blocks are still held.
        ok = self.replica.engine.reset_prefix_cache()
        self.replica.publish_pending_events()
        return _json({"success": ok})

    async def debug_cache(self, request: web.Request) -> web.Response:
        from headway.core.block_hash import to_event_int

        pool = self.replica.engine.pool
        hashes = pool.cached_hashes()
        return _json(
            {
                "block_size": pool.block_size,
                "num_blocks": pool.num_blocks,
                "num_free_blocks": pool.num_free,
                "num_cached_blocks": len(hashes),
                "block_hashes": sorted(to_event_int(h) for h in hashes),
                "block_digests": sorted(h.hex() for h in hashes),
            }
        )

    async def debug_timing(self, request: web.Request) -> web.Response:
        """Lag histograms since start: the engine loop's wake-up for each step's writes
        against the start of their slot (`wake_lag`) and each streamed chunk's write
        against its step's end (`emission_lag`); diff two reads for a window."""
        replica = self.replica
        return _json(
            {
                "wake_lag": replica.wake_lag.snapshot(),
                "emission_lag": replica.emission_lag.snapshot(),
            }
        )

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(self.replica.faults.config.as_dict())

    async def set_faults(self, request: web.Request) -> web.Response:
        data = decode_json_object(await request.read())
        try:
            self.replica.faults.config = self.replica.faults.config.updated(data)
        except FaultConfigError as exc:
            raise ApiError(400, str(exc)) from None
        return _json(self.replica.faults.config.as_dict())

    # -- SGLang-style endpoints (the Rust routers call them on any worker) -------
    def _server_info(self) -> dict[str, Any]:
        engine = self.replica.engine
        return {
            "model_path": self.config.model,
            "tokenizer_path": self.tokenizer.source,
            "served_model_name": self.config.names[0],
            "block_size": engine.config.block_size,
            "page_size": engine.config.block_size,
            "max_total_num_tokens": engine.config.num_gpu_blocks * engine.config.block_size,
            "max_running_requests": engine.config.scheduler.max_num_seqs,
            "max_num_batched_tokens": engine.config.scheduler.max_num_batched_tokens,
            "context_length": engine.config.max_model_len,
            "max_model_len": engine.config.max_model_len,
            "tp_size": self.config.tp,
            "dp_size": 1,
            "version": VLLM_VERSION,
            "engine": "headway-sim",
        }

    async def server_info(self, request: web.Request) -> web.Response:
        return _json(self._server_info())

    async def model_info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "model_path": self.config.model,
                "tokenizer_path": self.tokenizer.source,
                "is_generation": True,
                "served_model_name": self.config.names[0],
            }
        )

    async def get_load(self, request: web.Request) -> web.Response:
        engine = self.replica.engine
        running = list(engine.scheduler.running)
        return _json(
            [
                {
                    "dp_rank": 0,
                    "num_reqs": engine.num_running + engine.num_waiting,
                    "num_waiting_reqs": engine.num_waiting,
                    "num_tokens": sum(s.num_tokens for s in running),
                }
            ]
        )
