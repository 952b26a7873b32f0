"""What the gateway's metrics scraper costs: CPU per endpoint per second at the default
scrape interval, against a vLLM-sized `/metrics` page.

The page: a running `headway sim` replica's `/metrics` (vLLM's names) plus synthetic
histogram series in vLLM's layout (the latency and token-count histograms of
`vllm/v1/metrics/loggers.py`, one set per data-parallel `engine` label) until the
page reaches `--page-kb` (default 150 KB; a real vLLM page is ~56 KB per engine).

Measured, in this process (the page is served by a child process whose CPU is not
counted):

* `parse_*_us`: CPU per call of the scraper's parse (filter the needed lines, then a
  strict prometheus_client parse of those) vs the baseline, a full
  prometheus_client parse of the whole page; median over `--repeats` calls.
* `loop_*`: the real `MetricsScraper` (aiohttp GET + parse) scraping `--endpoints`
  endpoints every `--interval` s for `--duration` s; CPU (user + system) of this
  process per endpoint per second, with the filtered parse and with the full parse.

    .venv/bin/python benchmarks/scraper_cost.py --out benchmarks/results/scraper_cost.json
    .venv/bin/python benchmarks/scraper_cost.py --tiny     # CI smoke configuration
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from headway.gateway.config import CollectorsConfig, EngineKind
from headway.gateway.scraper import MetricsScraper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# vLLM's histograms (name, buckets) as in vllm/v1/metrics/loggers.py.
_LAT = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
        120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
         7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
_ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0, 20.0, 40.0, 80.0)  # fmt: skip
_TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
HISTOGRAMS = (
    ("vllm:time_to_first_token_seconds", _TTFT),
    ("vllm:inter_token_latency_seconds", _ITL),
    ("vllm:request_time_per_output_token_seconds", _ITL),
    ("vllm:e2e_request_latency_seconds", _LAT),
    ("vllm:request_queue_time_seconds", _LAT),
    ("vllm:request_inference_time_seconds", _LAT),
    ("vllm:request_prefill_time_seconds", _LAT),
    ("vllm:request_decode_time_seconds", _LAT),
    ("vllm:request_prompt_tokens", _TOKENS),
    ("vllm:request_generation_tokens", _TOKENS),
    ("vllm:request_params_max_tokens", _TOKENS),
    ("vllm:request_max_num_generation_tokens", _TOKENS),
    ("vllm:iteration_tokens_total", _TOKENS),
    ("vllm:request_params_n", (1, 2, 5, 10, 20)),
)


def _histograms(engine: int) -> str:
    out = []
    for name, buckets in HISTOGRAMS:
        labels = f'engine="{engine}",model_name="{MODEL}"'
        out.append(f"# HELP {name} Histogram of {name.split(':')[1]}.")
        out.append(f"# TYPE {name} histogram")
        total = 0
        for i, le in enumerate(buckets):
            total += (i * 7 + engine) % 13
            out.append(f'{name}_bucket{{{labels},le="{float(le)}"}} {float(total)}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(total)}')
        out.append(f"{name}_count{{{labels}}} {float(total)}")
        out.append(f"{name}_sum{{{labels}}} {total * 0.37:.6f}")
        out.append(f"# HELP {name}_created Histogram of {name.split(':')[1]}.")
        out.append(f"# TYPE {name}_created gauge")
        out.append(f"{name}_created{{{labels}}} 1.7642e+09")
    return "\n".join(out) + "\n"


def build_page(sim_page: str, page_kb: float) -> bytes:
    """The simulator's page, then vLLM-layout histograms per engine label until the
    page is at least `page_kb` KB."""
    parts = [sim_page]
    size = len(sim_page)
    engine = 1
    while size < page_kb * 1000:
        block = _histograms(engine)
        parts.append(block)
        size += len(block)
        engine += 1
    return "".join(parts).encode()


def _sim_page(tmp: Path) -> str:
    ready = tmp / "sim-ready.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "headway.cli", "sim", "--port", "0", "--ready-file", str(ready)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("headway sim did not start")
            time.sleep(0.05)
        url = json.loads(ready.read_text())["replicas"][0]["url"]
        from urllib.request import urlopen

        with urlopen(url + "/metrics", timeout=10) as resp:
            return str(resp.read().decode())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- page server (child process) --------------------------------------------------
def _serve(page_path: Path, ready: Path) -> None:
    from aiohttp import web

    page = page_path.read_bytes()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/plain")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", metrics)  # /eN/metrics: one URL per endpoint
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        ready.write_text(str(port))
        await asyncio.Event().wait()

    asyncio.run(main())


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _median_cpu_us(fn: Any, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        samples.append((time.process_time() - t0) * 1e6)
    return statistics.median(samples)


async def _loop(urls: list[str], interval_s: float, duration_s: float, full: bool) -> dict[str, Any]:  # fmt: skip
    scraper = MetricsScraper(
        dict.fromkeys(urls, EngineKind.VLLM),
        CollectorsConfig(scrape_interval_s=interval_s, stale_after_intervals=1000),
    )
    num_scrapes = 0
    original = scraper.parse

    def counting_parse(url: str, page: bytes) -> Any:
        nonlocal num_scrapes
        num_scrapes += 1
        if full:  # the baseline: parse every sample of the page, then read
            list(text_string_to_metric_families(page.decode()))
        return original(url, page)

    scraper.parse = counting_parse  # type: ignore[method-assign]
    await asyncio.sleep(0.2)
    cpu0, t0 = _cpu_s(), time.monotonic()
    scraper.start()
    await asyncio.sleep(duration_s)
    await scraper.stop()
    cpu, wall = _cpu_s() - cpu0, time.monotonic() - t0
    fresh = sum(1 for u in urls if (v := scraper.view(u)) is not None and v.metrics is not None)
    return {
        "num_endpoints": len(urls),
        "num_scrapes": num_scrapes,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 4),
        "cpu_ms_per_endpoint_per_s": round(cpu * 1e3 / wall / len(urls), 3),
        "core_share_per_endpoint": round(cpu / wall / len(urls), 5),
        "cpu_us_per_scrape": round(cpu * 1e6 / max(1, num_scrapes), 1),
        "num_endpoints_with_metrics": fresh,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--page-kb", type=float, default=150.0)
    ap.add_argument("--endpoints", type=int, default=16, help="endpoints scraped at once")
    ap.add_argument("--interval", type=float, default=CollectorsConfig.scrape_interval_s)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per loop arm")
    ap.add_argument("--repeats", type=int, default=200, help="parse calls per parse figure")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--serve-page", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_page is not None:
        _serve(args.serve_page, args.ready_file)
        return
    if args.tiny:
        args.endpoints, args.duration, args.repeats = 2, 1.0, 10
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        page = build_page(_sim_page(tmp), args.page_kb)
        page_path = tmp / "page.txt"
        page_path.write_bytes(page)
        text = page.decode()
        num_lines = text.count("\n")
        num_samples = sum(len(f.samples) for f in text_string_to_metric_families(text))

        probe = MetricsScraper({"http://x": EngineKind.VLLM}, CollectorsConfig())
        metrics = probe.parse("http://x", page)
        assert metrics.block_size and metrics.num_gpu_blocks, metrics
        filtered_us = _median_cpu_us(lambda: probe.parse("http://x", page), args.repeats)
        full_us = _median_cpu_us(
            lambda: list(text_string_to_metric_families(page.decode())), args.repeats
        )

        servers = []
        urls = []
        try:
            # One page server per 8 endpoints keeps the server side from being the limit.
            for i in range((args.endpoints + 7) // 8):
                ready = tmp / f"server{i}.port"
                servers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--serve-page",
                            str(page_path),
                            "--ready-file",
                            str(ready),
                        ],
                        stdin=subprocess.DEVNULL,
                    )
                )
                deadline = time.monotonic() + 20
                while not ready.exists() or not ready.read_text():
                    if time.monotonic() > deadline:
                        raise RuntimeError("page server did not start")
                    time.sleep(0.02)
                port = int(ready.read_text())
                # Distinct URLs (one scrape loop each) on the same server.
                urls += [f"http://127.0.0.1:{port}/e{j}" for j in range(8)]
            urls = urls[: args.endpoints]
            loop_filtered = asyncio.run(_loop(urls, args.interval, args.duration, False))
            loop_full = asyncio.run(_loop(urls, args.interval, args.duration, True))
        finally:
            for s in servers:
                s.terminate()
                s.wait(timeout=10)

    result = {
        "benchmark": "scraper_cost",
        "config": {
            "page_kb_target": args.page_kb,
            "num_endpoints": args.endpoints,
            "scrape_interval_s": args.interval,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "tiny": args.tiny,
        },
        "page": {"bytes": len(page), "lines": num_lines, "samples": num_samples},
        "parse_filtered_us": round(filtered_us, 1),
        "parse_full_us": round(full_us, 1),
        "full_over_filtered": round(full_us / filtered_us, 1) if filtered_us else None,
        "loop_filtered": loop_filtered,
        "loop_full": loop_full,
        "formulas": {
            "cpu_ms_per_endpoint_per_s": "process CPU (user+sys) during the loop / wall / endpoints",
            "core_share_per_endpoint": "cpu_ms_per_endpoint_per_s / 1000",
        },
    }
    print(
        f"page {len(page) / 1000:.0f} KB, {num_samples} samples: parse filtered "
        f"{filtered_us:.0f} us vs full {full_us:.0f} us ({result['full_over_filtered']}x); "
        f"scrape loop every {args.interval} s: {loop_filtered['cpu_ms_per_endpoint_per_s']} ms "
        f"CPU per endpoint per s (full parse: {loop_full['cpu_ms_per_endpoint_per_s']})"
    )
    write_result(args.out, result, inputs=("src/headway/gateway", "benchmarks/scraper_cost.py"))


if __name__ == "__main__":
    main()
