"""/metrics under vLLM's names, parsed with prometheus_client; counters move with
traffic; preemption shows under KV pressure."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sim_harness import MODEL, Fleet, chat_body, families, get, openai_client, poll, post, scrape

GAUGES = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"]
COUNTERS = [
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
    "vllm:request_success",
]
HISTOGRAMS = [
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
]


def test_vllm_metric_names_and_types(main_fleet: Fleet) -> None:
    fams = families(main_fleet.url)
    for name in GAUGES:
        assert fams[name].type == "gauge", name
    for name in COUNTERS:
        assert fams[name].type == "counter", name
    for name in HISTOGRAMS:
        assert fams[name].type == "histogram", name
    # Counters carry the _total suffix on the wire, as vLLM's do.
    samples = scrape(main_fleet.url)
    assert "vllm:prefix_cache_queries_total" in samples
    assert "vllm:prefix_cache_hits_total" in samples
    assert "vllm:prompt_tokens_total" in samples
    assert "vllm:generation_tokens_total" in samples
    (info,) = fams["vllm:cache_config_info"].samples
    assert info.labels["block_size"] == "16"
    assert int(info.labels["num_gpu_blocks"]) == main_fleet.info["num_gpu_blocks"] > 0
    assert info.value == 1.0
    for s in fams["vllm:num_requests_running"].samples:
        assert s.labels["model_name"] == MODEL
    usage = fams["vllm:kv_cache_usage_perc"].samples[0].value
    assert 0.0 <= usage <= 1.0


def test_counters_move_after_requests(main_fleet: Fleet) -> None:
    url = main_fleet.url
    before = scrape(url)
    prompt = "metrics counters move " * 20
    r1 = post(url, "/v1/chat/completions", chat_body(prompt, max_tokens=5, ignore_eos=True))
    r2 = post(url, "/v1/chat/completions", chat_body(prompt, max_tokens=5, ignore_eos=True))
    assert r1.status == r2.status == 200
    n_prompt = r1.json()["usage"]["prompt_tokens"]
    after = scrape(url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta("vllm:prompt_tokens_total") >= n_prompt
    assert delta("vllm:generation_tokens_total") == 10
    assert delta("vllm:prefix_cache_queries_total") >= 2 * n_prompt - 1
    assert delta("vllm:prefix_cache_hits_total") >= (n_prompt - 1) // 16 * 16 > 0
    assert delta("vllm:request_success_total") == 2
    assert delta("vllm:time_to_first_token_seconds_count") == 2
    assert delta("vllm:e2e_request_latency_seconds_count") == 2
    assert delta("vllm:inter_token_latency_seconds_count") == 8
    for phase in ("queue", "prefill", "decode"):
        assert delta(f"vllm:request_{phase}_time_seconds_count") == 2, phase
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:num_requests_waiting"] == 0
    fams = families(url)
    reasons = {s.labels["finished_reason"] for s in fams["vllm:request_success"].samples}
    assert "length" in reasons


def test_preemption_under_kv_pressure(start_fleet: Any) -> None:
    fleet = start_fleet(
        "--num-gpu-blocks-override", "40", "--block-size", "16", "--time-scale", "20"
    )
    c = openai_client(fleet.url, timeout_s=60.0)

    def one(i: int) -> Any:
        return c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"long story number {i} " * 4}],
            max_tokens=250,
            extra_body={"ignore_eos": True},
        )

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert [r.usage.completion_tokens for r in results] == [250] * 6
    assert all(r.choices[0].finish_reason == "length" for r in results)
    after = scrape(fleet.url)
    assert after["vllm:num_preemptions_total"] > 0
    poll(
        lambda: scrape(fleet.url)["vllm:num_requests_running"],
        lambda v: v == 0,
        what="num_requests_running == 0",
    )
    (info,) = families(fleet.url)["vllm:cache_config_info"].samples
    assert info.labels["num_gpu_blocks"] == "40"


def test_page_restricted_by_name_like_prometheus_client(main_fleet: Fleet) -> None:
    """`GET /metrics?name[]=...` answers only those series (sample names), as
    prometheus_client's exposition apps (vLLM's /metrics) do; scrapers use it."""
    names = ["vllm:num_requests_running", "vllm:prefix_cache_hits_total", "vllm:cache_config_info"]
    query = "&".join(f"name[]={n}" for n in names)
    resp = get(main_fleet.url, f"/metrics?{query}")
    assert resp.status == 200
    got = {
        s.name
        for family in text_string_to_metric_families(resp.body.decode())
        for s in family.samples
    }
    assert got == set(names)
    whole = scrape(main_fleet.url)
    assert "vllm:time_to_first_token_seconds_count" in whole  # the plain page is whole
