"""Durable workflows driven through the running server: the procurement example end to end
with the `interlock` CLI (including the human approval), and the crash test — runs with
side-effecting tool steps while the server is killed with SIGKILL and restarted."""
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from conftest import HERE, start_interlock, stop_interlock

EXAMPLE = os.path.join(HERE, "..", "..", "examples", "procurement")
BINARY = os.environ.get("INTERLOCK_BIN", os.path.join(HERE, "..", "..", ".build", "debug", "interlock"))


def start_tools(delay_ms=0):
    process = subprocess.Popen(
        [sys.executable, os.path.join(EXAMPLE, "tools.py"), "--port", "0", "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    return process, int(line.strip().rsplit(":", 1)[-1])


def call(method, url, token, body=None):
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("authorization", f"Bearer {token}")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_until_completed(base, token, ids, timeout_s=120):
    """Polls the runs until each has completed (a failed, cancelled or stopped one fails the
    test); the ids still pending when time ran out. `base` may be a function of how many
    are pending, to spread the polling over nodes."""
    pending = set(ids)
    deadline = time.time() + timeout_s
    while pending and time.time() < deadline:
        for run_id in list(pending):
            url = base(len(pending)) if callable(base) else base
            status, run = call("GET", f"{url}/v1/runs/{run_id}", token)
            if status != 200:
                continue  # the node could not read its store this moment (the restart test)
            assert run["status"] not in ("failed", "cancelled", "stopped_by_budget"), run
            if run["status"] == "completed":
                pending.discard(run_id)
        time.sleep(0.2)
    return pending


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.loads(response.read())


def test_procurement_example_with_the_cli_and_a_human_approval():
    tools, tools_port = start_tools()
    operator = "il-operator-demo-token-0000001"
    env = {"INTERLOCK_PORT": "0", "PROCUREMENT_TOOLS_PORT": str(tools_port), "INTERLOCK_OPERATOR_TOKEN": operator}
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
    process, base, _ = start_interlock(os.path.join(EXAMPLE, "interlock.yaml"), env=env, stderr=log)
    cli_env = dict(os.environ, **env)
    try:
        # A matching invoice: the run completes, no email.
        done = subprocess.run(
            [BINARY, "run", "invoice_reconciliation", "--url", base, "--wait", "--timeout-s", "60",
             "--input", json.dumps({"invoice_text": "Invoice 77 from Acme Tools for PO-1001, total 1250.00 EUR"})],
            capture_output=True, text=True, env=cli_env, timeout=90)
        assert done.returncode == 0, done.stderr
        output = json.loads(done.stdout)
        assert output["matched"] is True and output["po_number"] == "PO-1001" and output["email"] is None

        # A mismatch: the exception agent's email waits for a person.
        waiting = subprocess.Popen(
            [BINARY, "run", "invoice_reconciliation", "--url", base, "--wait", "--timeout-s", "60",
             "--input", json.dumps({"invoice_text": "Invoice 78 from Acme Tools for PO-1002, total 980.00 EUR"})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
        approval = None
        deadline = time.time() + 30
        while time.time() < deadline and approval is None:
            status, listed = call("GET", f"{base}/v1/approvals?status=pending", operator)
            assert status == 200
            approval = next(iter(listed["data"]), None)
            time.sleep(0.1)
        assert approval is not None, "no approval was asked for"
        assert approval["kind"] == "approval" and "jo.miller@acme-tools.example" in approval["reason"]
        assert stats(tools_port)["sent"] == [], "nothing is sent before the approval"
        # The exception agent is not granted the mail tool: it could never send on its own.
        status, _ = call("POST", f"{base}/v1/tools/mail.sendEmail/invoke", "il-exception-demo-key-00000001",
                         {"arguments": {"to": "x@y.example", "subject": "s", "text": "t"}})
        assert status == 403
        approved = subprocess.run(
            [BINARY, "approvals", "approve", approval["id"], "--url", base, "--note", "checked with the buyer"],
            capture_output=True, text=True, env=cli_env, timeout=30)
        assert approved.returncode == 0, approved.stderr
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        result = json.loads(out)
        assert result["matched"] is False and result["email"]["status"] == "sent"
        sent = stats(tools_port)["sent"]
        assert len(sent) == 1 and sent[0]["to"] == "jo.miller@acme-tools.example"

        # The run records who approved: the human supervisor.
        status, runs = call("GET", f"{base}/v1/runs?workflow=invoice_reconciliation", operator)
        latest = runs["data"][0]
        status, run = call("GET", f"{base}/v1/runs/{latest['id']}", operator)
        assert run["supervisor"] == "operator:alice" and run["status"] == "completed"
        assert [step["path"] for step in run["steps"]] == ["intake", "validate", "route", "draft", "approve", "send"]

        # An event starts a run too, once per dedup key.
        clerk = "il-ap-clerk-demo-key-000000001"
        body = {"type": "invoice.received", "payload": {"invoice_text": "Invoice 79, PO-1001, 1250.00 EUR"}, "dedup_key": "inv-79"}
        assert call("POST", f"{base}/v1/events", clerk, body)[0] == 202
        assert call("POST", f"{base}/v1/events", clerk, body)[0] == 200
        deadline = time.time() + 30
        started = []
        while time.time() < deadline:
            _, runs = call("GET", f"{base}/v1/runs?workflow=invoice_reconciliation&limit=10", operator)
            started = [r for r in runs["data"] if r["started_by"].startswith("event:")]
            if started and started[0]["status"] == "completed":
                break
            time.sleep(0.1)
        assert len(started) == 1 and started[0]["status"] == "completed"
        # SIGTERM: the worker stops with the server and the process exits cleanly.
        assert stop_interlock(process) == 0
    finally:
        if process.poll() is None:
            stop_interlock(process)
        tools.terminate()


def test_a_killed_server_loses_no_run_and_repeats_no_side_effect():
    tools, tools_port = start_tools(delay_ms=60)
    db = os.path.join(tempfile.mkdtemp(prefix="interlock-crash-"), "crash.sqlite")
    env = {"TOOLS_PORT": str(tools_port)}
    operator = "crash-operator-token-0000001"
    runs = 100
    steps = ["first", "second", "each-1", "each-2"]
    log = open(db + ".log", "w")
    process, base, _ = start_interlock("crash.yaml", env=env, db=db, stderr=log)
    random.seed(7)
    kills = 0
    try:
        ids = []
        for n in range(runs):
            status, run = call("POST", f"{base}/v1/runs", operator, {"workflow": "mailing", "input": {"n": n}})
            assert status == 201, run
            ids.append(run["id"])
        # Kill it at random moments while the runs are sending, and start it again.
        total = runs * len(steps)
        while kills < 6:
            time.sleep(random.uniform(0.1, 0.3))
            sent = len(stats(tools_port)["sent"])
            if sent >= total:
                break
            if sent == 0:
                continue
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            process, base, _ = start_interlock("crash.yaml", env=env, db=db, stderr=log)
        pending = wait_until_completed(base, operator, ids)
        assert not pending, f"{len(pending)} runs did not complete after {kills} kills"
        assert kills >= 3, f"only {kills} kills landed while runs were sending"
        subjects = [email["subject"] for email in stats(tools_port)["sent"]]
        expected = sorted(f"{n}-{step}" for n in range(runs) for step in steps)
        assert sorted(subjects) == expected, "every completed step's email was sent exactly once"
    finally:
        if process.poll() is None:
            stop_interlock(process)
        tools.terminate()
