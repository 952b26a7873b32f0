"""`headway demo`: the main job on the built-in simulated fleet.

Until the gateway lands, the demo starts a simulated vLLM fleet in this process and
drives it with the official `openai` client: a streamed chat, then a multi-turn
conversation with a long shared system prompt (showing prefix-cache hits), then a
burst of concurrent requests, then what the replicas' `/metrics` say.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, cast

import aiohttp
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from headway.sim.config import SimConfig
from headway.sim.fleet import Fleet

SYSTEM_PROMPT = (
    "You are the on-call assistant of an inference platform team. You answer questions "
    "about latency, throughput, caching and capacity of a fleet of model servers. "
) * 12


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--requests", type=int, default=16, help="size of the concurrent burst")


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.name.endswith(("_bucket", "_created")):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


async def _num_cached_blocks(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/debug/cache") as resp:
        return int((await resp.json())["num_cached_blocks"])


async def _stream_one(client: AsyncOpenAI, model: str, messages: list[dict[str, Any]],
                      console: Console | None, max_tokens: int = 48) -> dict[str, Any]:  # fmt: skip
    t0 = time.perf_counter()
    ttft = None
    text = []
    usage = None
    stream = await client.chat.completions.create(
        model=model,
        messages=cast("list[ChatCompletionMessageParam]", messages),
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices:
            if ttft is None:
                ttft = time.perf_counter() - t0
            piece = chunk.choices[0].delta.content or ""
            text.append(piece)
            if console is not None:
                console.print(piece, end="", highlight=False)
        if chunk.usage is not None:
            usage = chunk.usage
    if console is not None:
        console.print()
    cached = 0
    if usage is not None and usage.prompt_tokens_details is not None:
        cached = usage.prompt_tokens_details.cached_tokens or 0
    return {
        "ttft_ms": (ttft or 0.0) * 1e3,
        "e2e_ms": (time.perf_counter() - t0) * 1e3,
        "text": "".join(text),
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": usage.completion_tokens if usage else 0,
        "cached_tokens": cached,
    }


async def run_demo(args: argparse.Namespace) -> None:
    console = Console()
    config = SimConfig(
        model=args.model,
        gpu=args.gpu,
        num_replicas=args.replicas,
        port=0,
        time_scale=args.time_scale,
        enable_prompt_tokens_details=True,
    )
    fleet = Fleet(config)
    await fleet.start()
    try:
        info = fleet.describe()
        console.rule("[bold]Headway demo: a simulated vLLM fleet")
        console.print(
            f"{len(fleet.replicas)} replicas of {info['model']} on {info['gpu']} "
            f"({info['precision']}, TP{info['tp']}), {info['num_gpu_blocks']} KV blocks of "
            f"{info['block_size']} tokens each, time-scale {info['time_scale']}"
        )
        for r in fleet.replicas:
            console.print(f"  replica at {r.url}")
        model = config.names[0]
        clients = [AsyncOpenAI(base_url=r.url + "/v1", api_key="demo") for r in fleet.replicas]
        # Open each client's connection, and let the SDK load its streaming types, so
        # TTFT below is the server's and not the client's start-up.
        await asyncio.gather(*(c.models.list() for c in clients))
        await _stream_one(clients[0], model, [{"role": "user", "content": "warm-up"}], None, 1)

        console.rule("1. One streamed answer (openai client, stream=True)")
        res = await _stream_one(
            clients[0], model, [{"role": "user", "content": "What is prefix caching?"}], console
        )
        console.print(
            f"TTFT {res['ttft_ms']:.1f} ms, {res['completion_tokens']} tokens in "
            f"{res['e2e_ms']:.1f} ms"
        )

        console.rule("2. A multi-turn chat with a long system prompt, on one replica")
        table = Table("turn", "prompt tokens", "cached tokens", "TTFT ms")
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
        for turn, question in enumerate(
            ["How do I cut TTFT?", "And at high load?", "What about long contexts?"], 1
        ):
            messages.append({"role": "user", "content": question})
            res = await _stream_one(clients[1 % len(clients)], model, messages, None)
            messages.append({"role": "assistant", "content": res["text"]})
            table.add_row(str(turn), str(res["prompt_tokens"]), str(res["cached_tokens"]),
                          f"{res['ttft_ms']:.1f}")  # fmt: skip
        console.print(table)
        console.print("Later turns reuse the blocks of earlier ones: cached tokens grow.")

        console.rule(f"3. A burst of {args.requests} concurrent requests, spread round-robin")
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(
                _stream_one(
                    clients[i % len(clients)],
                    model,
                    [
                        {"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": f"Question number {i}: how many GPUs?"},
                    ],
                    None,
                    max_tokens=64,
                )
                for i in range(args.requests)
            )
        )
        wall = time.perf_counter() - t0
        ttfts = sorted(r["ttft_ms"] for r in results)
        tokens = sum(r["completion_tokens"] for r in results)
        console.print(
            f"{len(results)} requests, {tokens} output tokens in {wall:.2f} s; "
            f"TTFT p50 {ttfts[len(ttfts) // 2]:.1f} ms, max {ttfts[-1]:.1f} ms"
        )

        console.rule("4. What the replicas' /metrics report (vLLM metric names)")
        table = Table("replica", "prompt tok", "gen tok", "prefix hits / queries",
                      "cached blocks")  # fmt: skip
        async with aiohttp.ClientSession() as session:
            for i, r in enumerate(fleet.replicas):
                m = await _metrics(session, r.url)
                q = m.get("vllm:prefix_cache_queries_total", 0.0)
                h = m.get("vllm:prefix_cache_hits_total", 0.0)
                table.add_row(
                    str(i), f"{m.get('vllm:prompt_tokens_total', 0):.0f}",
                    f"{m.get('vllm:generation_tokens_total', 0):.0f}",
                    f"{h:.0f} / {q:.0f} ({(h / q if q else 0):.0%})",
                    str(await _num_cached_blocks(session, r.url)),
                )  # fmt: skip
        console.print(table)
        for c in clients:
            await c.close()
    finally:
        await fleet.stop()


def run(args: argparse.Namespace) -> int:
    import uvloop

    uvloop.run(run_demo(args))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
