"""Serving latency under load, and the memory each added adapter costs.

  python bench/serve_latency.py                      # both, on a tiny random MLLM on CPU (nothing downloaded)
  python bench/serve_latency.py --only load --model DIR --clients 1,8,32 --seconds 60
  python bench/serve_latency.py --only memory --adapters 1,16,256

load: the real server (`lntune serve` in its own process, uvicorn on 127.0.0.1) with --serve-adapters
layernorm-simple adapters, run twice: joining a running batch on (the default) and off (`--no-join`), each its own
server process. C clients (threads with their own HTTP connections) each send one streaming chat request (a
question about an image, greedy, --max-tokens tokens, client i's k-th request asking adapter (i + k) mod the
adapters) after the other for --seconds, then finish the requests in flight. Per run: requests, failed requests
(anything but a complete 200 stream), latency p50 / p95 (request sent -> last byte), time to the first token p50,
and tokens/s (completion tokens, as the server's usage counts them, over the run's wall time). Client counts and
servers are interleaved over --rounds rounds; each figure is printed as the median [min-max] over the rounds.

memory: one copy of the base model (lntune.serve.adapters.AdapterSet) and N layernorm-simple adapters loaded into
its norm banks: the banks' tensor bytes (allocated; a bank grows by doubling, so allocated >= used) and the
process's resident memory (RSS, /proc/self/status) before and after, against the adapter's file on disk
(trainable.safetensors) and its tensor bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import tiny_model, write_adapters  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def _spread(values: list[float], digits: int = 2) -> str:
    return (f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"
            if values else "-")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


# ---- load ---------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _image_url() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 80, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _one_request(client: httpx.Client, url: str, model: str, image: str, max_tokens: int) -> dict:
    """One streaming request: latency (s), time to the first content (s), completion tokens; `failed` on anything but
    a complete 200 stream ending in [DONE]."""
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                      {"type": "text", "text": "What is in the image?"}]}]}
    started = time.perf_counter()
    first, tokens, done = None, 0, False
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                return {"failed": f"{response.status_code} {response.text[:200]}"}
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    return {"failed": chunk["error"]["message"]}
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if first is None and any(choice["delta"].get("content") for choice in chunk["choices"]):
                    first = time.perf_counter() - started
    except httpx.HTTPError as error:
        return {"failed": f"{type(error).__name__}: {error}"}
    if not done:
        return {"failed": "the stream ended without [DONE]"}
    return {"latency": time.perf_counter() - started, "first": first, "tokens": tokens}


def load_run(url: str, models: list[str], clients: int, seconds: float, max_tokens: int, image: str) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client_loop(index: int) -> None:
        with httpx.Client(timeout=300) as client:
            barrier.wait()
            count = 0
            while time.perf_counter() < stop_at[0]:
                result = _one_request(client, url, models[(index + count) % len(models)], image, max_tokens)
                count += 1
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=client_loop, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    good = [result for result in results if "failed" not in result]
    failed = [result["failed"] for result in results if "failed" in result]
    latencies = [result["latency"] for result in good]
    firsts = [result["first"] for result in good if result["first"] is not None]
    return {"requests": len(results), "failed": len(failed), "failures": failed[:3],
            "p50": _percentile(latencies, 0.5) if latencies else None,
            "p95": _percentile(latencies, 0.95) if latencies else None,
            "first_p50": _percentile(firsts, 0.5) if firsts else None,
            "tokens_per_second": sum(result["tokens"] for result in good) / wall}


def _start_server(model_dir: Path, adapters_dir: Path, args, join: bool):
    port = _free_port()
    command = [sys.executable, "-m", "lntune", "serve", "--model", str(model_dir), "--adapters-dir", str(adapters_dir),
               "--port", str(port), "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms)]
    server = subprocess.Popen(command + ([] if join else ["--no-join"]), cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return server, f"http://127.0.0.1:{port}"


def _wait_ready(server, url: str) -> None:
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start in 300 s")
        time.sleep(0.2)


def _stop(server) -> None:
    server.terminate()
    try:
        server.wait(120)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def bench_load(args, model_dir: Path, scratch: Path) -> None:
    adapters_dir = scratch / "served"
    folders = write_adapters(model_dir, adapters_dir, args.serve_adapters, "layernorm-simple")
    models = [folder.name for folder in folders]
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.join]
    servers = {}
    try:
        for join in modes:  # each server in its own process; an idle one waits on a condition (no CPU)
            servers[join] = _start_server(model_dir, adapters_dir, args, join)
        for server, url in servers.values():
            _wait_ready(server, url)
        image = _image_url()
        client_counts = [int(count) for count in args.clients.split(",")]
        print(f"load: lntune serve (uvicorn, own process) on 127.0.0.1, {len(models)} layernorm-simple adapters, "
              f"max batch {args.max_batch}, batch wait {args.batch_wait_ms} ms, joining a running batch "
              f"{' and '.join('on' if join else 'off (--no-join)' for join in modes)}; streaming requests (question + "
              f"image, greedy, max_tokens {args.max_tokens}); {args.seconds:g} s per run, {args.rounds} rounds "
              f"interleaved; load average {_load_average()}")
        for server, url in servers.values():  # warm-up
            load_run(url, models, max(client_counts), min(5.0, args.seconds), args.max_tokens, image)
        runs: dict[tuple, list[dict]] = {(join, count): [] for count in client_counts for join in modes}
        for _ in range(args.rounds):
            for count in client_counts:
                for join in modes:
                    runs[join, count].append(load_run(servers[join][1], models, count, args.seconds, args.max_tokens,
                                                      image))
        print(f"{'join':>4} {'clients':>7} {'requests':>16} {'failed':>6} {'p50 latency s':>20} {'p95 latency s':>20} "
              f"{'p50 first token s':>20} {'tokens/s':>20}")
        for (join, count), results in runs.items():
            failed = sum(result["failed"] for result in results)
            print(f"{'on' if join else 'off':>4} {count:>7} {_spread([r['requests'] for r in results], 0):>16} "
                  f"{failed:>6} {_spread([r['p50'] for r in results if r['p50'] is not None]):>20} "
                  f"{_spread([r['p95'] for r in results if r['p95'] is not None]):>20} "
                  f"{_spread([r['first_p50'] for r in results if r['first_p50'] is not None]):>20} "
                  f"{_spread([r['tokens_per_second'] for r in results], 1):>20}")
            for result in results:
                for failure in result["failures"]:
                    print(f"        failure: {failure}")
        print(f"(median [min-max] over {args.rounds} rounds; load average now {_load_average()})")
    finally:
        for server, _ in servers.values():
            _stop(server)


# ---- memory -------------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _bank_bytes(adapter_set) -> int:
    total = 0
    for banked in adapter_set.norms.values():
        total += banked.weight_bank.numel() * banked.weight_bank.element_size()
        if banked.bias_bank is not None:
            total += banked.bias_bank.numel() * banked.bias_bank.element_size()
    for grouped in adapter_set.grouped.values():
        total += sum(t.numel() * t.element_size() for tensors in grouped.overrides.values() for t in tensors.values())
    return total


def bench_memory(args, model_dir: Path, scratch: Path) -> None:
    import gc

    from lntune.adapter import TRAINABLE_FILE
    from lntune.model.load import load_model
    from lntune.serve.adapters import AdapterSet

    counts = [int(count) for count in args.adapters.split(",")]
    folders = write_adapters(model_dir, scratch / "memory", max(counts), "layernorm-simple")
    file_bytes = (folders[0] / TRAINABLE_FILE).stat().st_size
    print(f"memory: layernorm-simple adapters of {model_dir if args.model else 'the tiny random model'}; "
          f"one adapter's {TRAINABLE_FILE} is {file_bytes:,} bytes on disk; load average {_load_average()}")
    print(f"{'adapters':>8} {'bank bytes before':>17} {'after':>10} {'per adapter':>11} {'tensor bytes':>12} "
          f"{'RSS before MB':>13} {'RSS after MB':>12} {'RSS per adapter':>15}")
    for count in counts:
        gc.collect()
        adapter_set = AdapterSet(load_model(model_dir).eval(), model_dir)
        gc.collect()
        bank_before, rss_before = _bank_bytes(adapter_set), _rss_bytes()
        tensor_bytes = 0
        for folder in folders[:count]:
            served = adapter_set.load(folder.name, folder)
            tensor_bytes = served.size_bytes
        gc.collect()
        bank_after, rss_after = _bank_bytes(adapter_set), _rss_bytes()
        print(f"{count:>8} {bank_before:>17,} {bank_after:>10,} {(bank_after - bank_before) / count:>11,.0f} "
              f"{tensor_bytes:>12,} {rss_before / 2**20:>13.1f} {rss_after / 2**20:>12.1f} "
              f"{(rss_after - rss_before) / count:>15,.0f}")
        del adapter_set
    print("(bank bytes: every norm's weight bank, allocated, row 0 the base's; tensor bytes: one adapter's tensors in "
          "memory; RSS per adapter: (after - before) / adapters, bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a built model directory (default: a tiny random one)")
    parser.add_argument("--only", choices=["load", "memory"], help="one of the two measurements (default: both)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients per run")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each run sends new requests")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median [min-max] is printed)")
    parser.add_argument("--serve-adapters", type=int, default=8, help="adapters the load test's server serves")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--join", choices=["both", "on", "off"], default="both",
                        help="load test servers: joining a running batch on (default serve), off (--no-join), or both")
    parser.add_argument("--adapters", default="1,16,256", help="adapters loaded for the memory measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = Path(args.model) if args.model else tiny_model(scratch / "tiny")
        if args.only in (None, "memory"):
            bench_memory(args, model_dir, scratch)
        if args.only in (None, "load"):
            bench_load(args, model_dir, scratch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
