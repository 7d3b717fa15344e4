#!/usr/bin/env python3
"""Measures an MCP tools/call made directly to the upstream vs through Interlock's /mcp, in
one run, and writes bench/results/tools-latest.md. Called by bench/tools/run."""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from measure import fixed_rate, rss_mb  # noqa: E402

KEY = "bench-agent-key-0000000001"


def call_body(name):
    path = tempfile.NamedTemporaryFile(delete=False, suffix=".json").name
    with open(path, "w") as handle:
        json.dump({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {"text": "hello"}}}, handle)
    return path


def session(url, headers):
    """An MCP session (initialize + initialized); the headers every later request carries."""
    def post(message, extra):
        request = urllib.request.Request(url, data=json.dumps(message).encode(), method="POST",
                                         headers={"content-type": "application/json", "accept": "application/json, text/event-stream", **headers, **extra})
        return urllib.request.urlopen(request)
    init = post({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                 "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}, {})
    extra = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    post({"jsonrpc": "2.0", "method": "notifications/initialized"}, extra)
    return {**headers, **extra, "accept": "application/json, text/event-stream"}


def wrk(url, body, headers, duration, connections):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", os.path.join(HERE, "post.lua"), url],
        env=dict(os.environ, BENCH_BODY=body, BENCH_HEADERS="\n".join(f"{k}: {v}" for k, v in headers.items())),
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0


def main():
    direct, through, pid, duration, command = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    direct_headers = session(direct, {})
    through_headers = session(through, {"authorization": f"Bearer {KEY}"})
    direct_body, through_body = call_body("echo"), call_body("bench.echo")
    # Both answer the same call the same way before anything is measured.
    for url, body, headers in ((direct, direct_body, direct_headers), (through, through_body, through_headers)):
        request = urllib.request.Request(url, data=open(body, "rb").read(), method="POST", headers={"content-type": "application/json", **headers})
        answer = json.load(urllib.request.urlopen(request))
        assert answer["result"]["structuredContent"] == {"text": "hello"}, answer
        wrk(url, body, headers, 2, 16)  # warm-up
    results = {"rss_idle_mb": rss_mb(pid, "VmRSS")}
    results["saturation_direct"], _ = wrk(direct, direct_body, direct_headers, duration, 64)
    results["saturation_through"], results["saturation_non2xx"] = wrk(through, through_body, through_headers, duration, 64)
    # Two cores carry the load generator, the upstream and Interlock, so one run's p99 swings
    # by a millisecond or more (the direct server's alone: 1.2-3.7 ms). Each rate is measured
    # `repeat` times, direct and through interleaved, and the median run of each is reported.
    for rate in (1000, 2000):
        runs = {"direct": [], "through": []}
        for _ in range(repeat):
            runs["direct"].append(fixed_rate(direct, direct_body, rate, duration, headers=direct_headers))
            runs["through"].append(fixed_rate(through, through_body, rate, duration, headers=through_headers))
        for side in ("direct", "through"):
            results[f"{side}_{rate}"] = {
                "p50": statistics.median(run["p50"] for run in runs[side]),
                "p99": statistics.median(run["p99"] for run in runs[side]),
                "failures": sum(run["failures"] for run in runs[side]),
                "runs_p99": [round(run["p99"], 2) for run in runs[side]],
            }
    results["rss_peak_mb"] = rss_mb(pid, "VmHWM")

    lines = [
        f"Command: `{command}` (release build, {duration} s per measurement; latencies are the median of {repeat} runs "
        "per rate, direct and through interleaved; this machine: 2 cores).",
        "",
        "| measurement | direct to the MCP server | through Interlock /mcp | ratio / added |",
        "|---|---|---|---|",
        f"| saturation (wrk, 64 connections) | {results['saturation_direct']:.0f} req/s | {results['saturation_through']:.0f} req/s "
        f"({results['saturation_non2xx']} non-2xx) | {results['saturation_through'] / results['saturation_direct'] * 100:.1f}% of direct |",
    ]
    for rate in (1000, 2000):
        d, t = results[f"direct_{rate}"], results[f"through_{rate}"]
        lines.append(f"| {rate} req/s p50 (h2load) | {d['p50']:.2f} ms | {t['p50']:.2f} ms | +{t['p50'] - d['p50']:.2f} ms |")
        lines.append(f"| {rate} req/s p99 (h2load) | {d['p99']:.2f} ms (runs {d['runs_p99']}) | {t['p99']:.2f} ms (runs {t['runs_p99']}) "
                     f"| +{t['p99'] - d['p99']:.2f} ms ({d['failures']}/{t['failures']} failures) |")
    lines.append(f"| Interlock RSS | | idle {results['rss_idle_mb']:.0f} MB, peak {results['rss_peak_mb']:.0f} MB | |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(os.path.dirname(HERE), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(HERE), "results", "tools-latest.md"), "w") as handle:
        handle.write(text)
    print(text)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
