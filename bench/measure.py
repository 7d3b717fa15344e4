#!/usr/bin/env python3
"""Measures direct (nginx) vs through-Interlock in one run and writes bench/results/latest.md.

Called by bench/run with the two base URLs, the Interlock pid and the run settings.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "bench-agent-key-0000000001"


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lower, upper = int(k), min(int(k) + 1, len(values) - 1)
    return values[lower] + (values[upper] - values[lower]) * (k - lower)


def wrk(url, body, duration, connections, credential=KEY):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", os.path.join(HERE, "post.lua"), url],
        env=dict(os.environ, BENCH_BODY=body, BENCH_CREDENTIAL=credential), capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0


PER_CONNECTION_RPS = 250
# How requests arrive at a fixed rate: "even" (the default) spreads them evenly in time;
# "bursts" is h2load's plain pacing, where every connection fires at the same instant.
ARRIVALS = os.environ.get("BENCH_ARRIVALS", "even")
if ARRIVALS not in ("even", "bursts"):
    sys.exit(f"BENCH_ARRIVALS must be 'even' or 'bursts', not {ARRIVALS!r}")


def even_clients(rate):
    """The number of h2load connections that spreads `rate` req/s evenly in time.

    h2load opens one connection per millisecond (`-r 1 --rate-period 1ms`), and each one then
    sends at `rate / clients` req/s, so connection i fires at phase i ms modulo the period
    `1000 * clients / rate` ms. This picks the count near 250 req/s per connection whose
    phases leave the smallest largest gap: 13 connections for 3,000 req/s fire every
    0.333 ms, 4 for 1,000 req/s every 1 ms.
    """
    best = None
    for clients in range(max(1, rate // 320), rate // 200 + 2):
        period = 1000.0 * clients / rate
        phases = sorted(i % period for i in range(clients))
        gaps = [b - a for a, b in zip(phases, phases[1:])] + [period - phases[-1] + phases[0]]
        key = (round(max(gaps), 6), abs(rate / clients - PER_CONNECTION_RPS))
        if best is None or key < best[0]:
            best = (key, clients)
    return best[1]


def fixed_rate(url, body, rate, duration, credential=KEY, headers=None):
    """Constant-rate load with h2load over HTTP/1.1; latencies from its per-request log.

    h2load starts every client's `--rps` timer at once when all connections open together:
    12 connections at 250 req/s arrive as bursts of 12 every 4 ms, which measures a burst
    of concurrency more than a rate. With BENCH_ARRIVALS=even (the default) the connections
    open one millisecond apart at a per-connection rate chosen so that their phases spread
    evenly (`even_clients`); BENCH_ARRIVALS=bursts keeps the synchronized pacing.
    """
    log = tempfile.NamedTemporaryFile(delete=False, suffix=".log").name
    if ARRIVALS == "bursts":
        clients = max(1, rate // PER_CONNECTION_RPS)
        pacing = ["-c", str(clients), "--rps", str(PER_CONNECTION_RPS), "-D", str(duration)]
    else:
        clients = even_clients(rate)
        requests = rate * duration // clients * clients
        pacing = ["-c", str(clients), "-r", "1", "--rate-period", "1ms", "--rps", f"{rate / clients:.6f}", "-n", str(requests)]
    subprocess.run(
        ["h2load", "--h1", *pacing,
         "-d", body, "-H", "content-type: application/json",
         *[arg for name, value in (headers or {"authorization": f"Bearer {credential}"}).items() for arg in ("-H", f"{name}: {value}")],
         "--log-file", log, url],
        capture_output=True, text=True, check=True,
    )
    latencies, failures = [], 0
    with open(log) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            if parts[1] != "200":
                failures += 1
                continue
            latencies.append(int(parts[2]) / 1000.0)
    os.unlink(log)
    # Drop the first second: connection set-up and warm-up.
    skip = min(len(latencies) // duration, len(latencies) // 10) if duration else 0
    latencies = latencies[skip:]
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "count": len(latencies), "failures": failures,
            "achieved_rps": len(latencies) / max(1, duration - 1)}


def ttfb(url, body, runs):
    values = []
    for _ in range(runs):
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{time_starttransfer}", "-X", "POST", url,
             "-H", "content-type: application/json", "-H", f"authorization: Bearer {KEY}", "--data-binary", "@" + body],
            capture_output=True, text=True, check=True,
        ).stdout
        values.append(float(out) * 1000)
    return percentile(values, 50), percentile(values, 99)


def rss_mb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    direct, through, bare, nio, pid, duration, command = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
    # An access token from /oauth/token: the same calls authenticated with a JWT.
    token = os.environ["BENCH_TOKEN"]
    body = os.path.join(HERE, "request.json")
    stream_body = os.path.join(HERE, "request-stream.json")
    chat_direct = direct + "/json/v1/chat/completions"
    sse_direct = direct + "/sse/v1/chat/completions"
    chat_through = through + "/v1/chat/completions"
    chat_bare = bare + "/v1/chat/completions"
    chat_nio = nio + "/v1/chat/completions"
    results = {"rss_idle_mb": rss_mb(pid, "VmRSS")}

    for url in (chat_direct, chat_through, chat_bare, chat_nio):
        wrk(url, body, 2, 16)  # warm-up
    # BENCH_REPEAT rounds, each measuring every variant in turn; the figures are medians over
    # the rounds, and each ratio the median of the rounds' own ratios (this machine's speed
    # drifts between rounds, so a variant is compared with direct from the same round).
    repeat = max(1, int(os.environ.get("BENCH_REPEAT", "1")))
    results["repeat"] = repeat
    targets = {"direct": (chat_direct, KEY), "through": (chat_through, KEY), "bare": (chat_bare, KEY), "nio": (chat_nio, KEY),
               "jwt": (chat_through, token)}
    rounds = []
    for _ in range(repeat):
        measured = {}
        for name, (url, credential) in targets.items():
            measured[name] = wrk(url, body, duration, 64, credential)
        rounds.append(measured)
    for name in targets:
        results[f"saturation_{name}"] = statistics.median(r[name][0] for r in rounds)
        results[f"saturation_{name}_runs"] = [r[name][0] for r in rounds]
        results[f"saturation_{name}_ratio"] = statistics.median(r[name][0] / r["direct"][0] for r in rounds)
    results["saturation_non2xx"] = sum(r["through"][1] for r in rounds)
    results["saturation_jwt_non2xx"] = sum(r["jwt"][1] for r in rounds)
    for rate in (1000, 3000):
        runs = {name: [] for name in targets}
        for _ in range(repeat):
            for name, (url, credential) in targets.items():
                runs[name].append(fixed_rate(url, body, rate, duration, credential))
        for name, measured in runs.items():
            results[f"{name}_{rate}"] = {
                "p50": statistics.median(m["p50"] for m in measured), "p99": statistics.median(m["p99"] for m in measured),
                "count": sum(m["count"] for m in measured), "failures": sum(m["failures"] for m in measured),
                "p99_runs": [round(m["p99"], 3) for m in measured],
            }
    results["ttfb_direct"] = ttfb(sse_direct, stream_body, 200)
    results["ttfb_through"] = ttfb(chat_through, stream_body, 200)
    results["rss_peak_mb"] = rss_mb(pid, "VmHWM")

    def ms(value):
        return f"{value:.3f}"

    lines = [
        "| measure | direct (nginx) | through Interlock | Interlock vs direct | bare Hummingbird→AHC proxy | bare vs direct | event-loop proxy prototype | prototype vs direct |",
        "|---|---|---|---|---|---|---|---|",
        f"| saturation, req/s (wrk, 2 threads, 64 connections, {duration} s) | {results['saturation_direct']:.0f} | {results['saturation_through']:.0f} | {results['saturation_through_ratio'] * 100:.1f}% | {results['saturation_bare']:.0f} | {results['saturation_bare_ratio'] * 100:.1f}% | {results['saturation_nio']:.0f} | {results['saturation_nio_ratio'] * 100:.1f}% |",
    ]
    for rate in (1000, 3000):
        d, t, b, n = results[f"direct_{rate}"], results[f"through_{rate}"], results[f"bare_{rate}"], results[f"nio_{rate}"]
        for p in ("p50", "p99"):
            lines.append(f"| {p} latency at {rate} req/s, ms | {ms(d[p])} | {ms(t[p])} | +{ms(t[p] - d[p])} | {ms(b[p])} | +{ms(b[p] - d[p])} | {ms(n[p])} | +{ms(n[p] - d[p])} |")
        lines.append(f"| requests measured at {rate} req/s (failed) | {d['count']} ({d['failures']}) | {t['count']} ({t['failures']}) | | {b['count']} ({b['failures']}) | | {n['count']} ({n['failures']}) | |")
    lines.append(f"| time to first streamed byte p50 / p99, ms | {ms(results['ttfb_direct'][0])} / {ms(results['ttfb_direct'][1])} | {ms(results['ttfb_through'][0])} / {ms(results['ttfb_through'][1])} | +{ms(results['ttfb_through'][0] - results['ttfb_direct'][0])} (p50) | | | | |")
    lines.append(f"| Interlock RSS idle / peak under load, MB | | {results['rss_idle_mb']:.1f} / {results['rss_peak_mb']:.1f} | | | | | |")
    lines += [
        "",
        "Authentication by access token (ES256 JWT from `/oauth/token`) instead of API key, same calls through Interlock:",
        "",
        "| measure | API key | access token | token vs key |",
        "|---|---|---|---|",
        f"| saturation, req/s | {results['saturation_through']:.0f} | {results['saturation_jwt']:.0f} | {statistics.median(a / b for a, b in zip(results['saturation_jwt_runs'], results['saturation_through_runs'])) * 100:.1f}% |",
    ]
    for rate in (1000, 3000):
        t, j = results[f"through_{rate}"], results[f"jwt_{rate}"]
        for p in ("p50", "p99"):
            lines.append(f"| {p} latency at {rate} req/s, ms | {ms(t[p])} | {ms(j[p])} | {j[p] - t[p]:+.3f} |")
        lines.append(f"| requests measured at {rate} req/s (failed) | {t['count']} ({t['failures']}) | {j['count']} ({j['failures']}) | |")
    if repeat > 1:
        lines += [
            "",
            f"Medians of {repeat} rounds (each round measures every variant in turn; ratios are medians of each round's own ratio). "
            f"Saturation runs, req/s — direct {results['saturation_direct_runs']}, through {results['saturation_through_runs']}, "
            f"prototype {results['saturation_nio_runs']}. p99 runs at 3000 req/s, ms — direct {results['direct_3000']['p99_runs']}, "
            f"through {results['through_3000']['p99_runs']}, prototype {results['nio_3000']['p99_runs']}.",
        ]
    table = "\n".join(lines)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    name = os.environ.get("BENCH_RESULTS_NAME", "latest")
    with open(os.path.join(HERE, "results", f"{name}.md"), "w") as f:
        f.write(f"Command: `{command}`\nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, machine: {os.cpu_count()} cores\n\n{table}\n")
    with open(os.path.join(HERE, "results", f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(table)


if __name__ == "__main__":
    main()
