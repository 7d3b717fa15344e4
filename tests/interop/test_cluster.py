"""Three `interlock serve` nodes on one PostgreSQL (the throwaway server scripts/test starts):
a node killed with SIGKILL while runs with side effects are in flight, a dollar budget and an
RPM limit hammered through all three nodes at once."""
import concurrent.futures
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid

import pytest

from conftest import start_interlock, stop_interlock
from test_workflows import call, start_tools, stats, wait_until_completed

POSTGRES = os.environ.get("INTERLOCK_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not POSTGRES, reason="needs INTERLOCK_TEST_POSTGRES_URL (scripts/test starts a PostgreSQL)")
OPERATOR = "cluster-operator-token-00001"


def sql(schema, query, url=None):
    """One value from the cluster's store, read with psql."""
    output = subprocess.run(
        ["psql", url or POSTGRES, "-tAq", "-c", f"SET search_path TO {schema}", "-c", query], capture_output=True, text=True, check=True).stdout
    return output.strip()


class Cluster:
    def __init__(self, nodes=3, tools_port=None, postgres=None):
        self.schema = "it_" + uuid.uuid4().hex[:12]
        self.postgres = postgres or POSTGRES
        self.log = open(f"/tmp/interlock-cluster-{self.schema}.log", "w")
        self.env = {"DATABASE_URL": self.postgres, "INTERLOCK_PG_SCHEMA": self.schema}
        if tools_port:
            self.env["TOOLS_PORT"] = str(tools_port)
        self.nodes = {}
        for index in range(1, nodes + 1):
            self.start(f"n{index}")

    def start(self, node_id):
        process, base, _ = start_interlock("cluster.yaml", env=dict(self.env, INTERLOCK_NODE_ID=node_id), stderr=self.log)
        self.nodes[node_id] = (process, base)

    def base(self, index):
        bases = [base for process, base in self.nodes.values() if process.poll() is None]
        return bases[index % len(bases)]

    def stop(self):
        for process, _ in self.nodes.values():
            if process.poll() is None:
                stop_interlock(process)
        subprocess.run(["psql", self.postgres, "-qc", f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"], capture_output=True)


def post_chat(base, key, content="hello"):
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", method="POST",
        data=json.dumps({"model": "fast", "max_tokens": 10, "messages": [{"role": "user", "content": content}]}).encode())
    request.add_header("authorization", f"Bearer {key}")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_nodes_list_each_other():
    cluster = Cluster(nodes=3)
    try:
        status, body = call("GET", f"{cluster.base(0)}/admin/v1/nodes", OPERATOR)
        assert status == 200, body
        assert sorted(node["id"] for node in body["data"]) == ["n1", "n2", "n3"]
        assert all(node["status"] == "up" for node in body["data"]), body
    finally:
        cluster.stop()


def test_a_killed_node_s_runs_are_finished_by_the_others_with_no_side_effect_repeated():
    # Slow enough tools that the runs are still in flight when n2 dies.
    tools, tools_port = start_tools(delay_ms=150)
    cluster = Cluster(nodes=3, tools_port=tools_port)
    runs = 90
    steps = ["first", "second", "each-1", "each-2"]
    try:
        ids = []
        for n in range(runs):
            status, run = call("POST", f"{cluster.base(n)}/v1/runs", OPERATOR, {"workflow": "mailing", "input": {"n": n}})
            assert status == 201, run
            ids.append(run["id"])
        # Kill n2 while it holds runs and emails are going out.
        deadline = time.time() + 60
        held = []
        while time.time() < deadline:
            sent = len(stats(tools_port)["sent"])
            held = sql(cluster.schema, "SELECT string_agg(run_id, ',') FROM run_queue WHERE lease_owner LIKE 'n2/%'").split(",")
            held = [run_id for run_id in held if run_id]
            if sent > 0 and held:
                break
            time.sleep(0.05)
        assert held, "n2 never held a run"
        killed = cluster.nodes["n2"][0]
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        unfinished_at_kill = [run_id for run_id in held if sql(cluster.schema, f"SELECT status FROM runs WHERE id = '{run_id}'") != "completed"]
        # n1 lists n2 as lost once its heartbeat is older than node_timeout_ms.
        lost = False
        for _ in range(50):
            _, body = call("GET", f"{cluster.base(0)}/admin/v1/nodes", OPERATOR)
            lost = any(node["id"] == "n2" and node["status"] == "lost" for node in body["data"])
            if lost:
                break
            time.sleep(0.1)
        assert lost, body

        pending = wait_until_completed(cluster.base(0), OPERATOR, ids)
        assert not pending, f"{len(pending)} runs did not complete"
        assert unfinished_at_kill, "every run n2 held had finished before the kill; nothing to recover"
        # Finished by n1 and n3: n2 is dead, and their histories go on after the kill.
        for run_id in unfinished_at_kill:
            assert sql(cluster.schema, f"SELECT status FROM runs WHERE id = '{run_id}'") == "completed"
        subjects = [email["subject"] for email in stats(tools_port)["sent"]]
        expected = sorted(f"{n}-{step}" for n in range(runs) for step in steps)
        assert sorted(subjects) == expected, "every completed step's email was sent exactly once"
        # The audit chain stays one verifiable chain though three nodes wrote it.
        nodes_in_audit = sql(cluster.schema, "SELECT string_agg(DISTINCT node, ',') FROM audit_log").split(",")
        assert {"n1", "n3"} <= set(nodes_in_audit), nodes_in_audit
    finally:
        cluster.stop()
        tools.terminate()


def test_answers_and_cancellations_given_on_one_node_reach_the_node_running_the_run():
    tools, tools_port = start_tools(delay_ms=3000)
    cluster = Cluster(nodes=3, tools_port=tools_port)
    try:
        # A cancel given on another node stops a run while its node is inside a 3 s tool call.
        status, run = call("POST", f"{cluster.base(0)}/v1/runs", OPERATOR, {"workflow": "mailing", "input": {"n": 1}})
        assert status == 201, run
        owner = ""
        for _ in range(200):
            owner = sql(cluster.schema, f"SELECT COALESCE(lease_owner, '') FROM run_queue WHERE run_id = '{run['id']}'")
            if owner and sql(cluster.schema, f"SELECT count(*) FROM run_events WHERE run_id = '{run['id']}' AND kind = 'step_started'") != "0":
                break
            time.sleep(0.02)
        holder = owner.split("/")[0]
        other = next(base for node, (process, base) in cluster.nodes.items() if node != holder)
        begun = time.time()
        status, body = call("POST", f"{other}/v1/runs/{run['id']}/cancel", OPERATOR, {"reason": "changed my mind"})
        assert status == 202, body
        while time.time() - begun < 10:
            status, current = call("GET", f"{other}/v1/runs/{run['id']}", OPERATOR)
            if current["status"] == "cancelled":
                break
            time.sleep(0.05)
        assert current["status"] == "cancelled", current
        assert time.time() - begun < 2.5, "the cancel waited for the step instead of reaching its node"

        # An approval given on one node lets the run go on wherever it waits.
        status, run = call("POST", f"{cluster.base(1)}/v1/runs", OPERATOR, {"workflow": "approved_mail", "input": {"n": 2}})
        assert status == 201, run
        approval = None
        for _ in range(200):
            _, listing = call("GET", f"{cluster.base(2)}/v1/approvals?status=pending", OPERATOR)
            approval = next((item for item in listing["data"] if item.get("run") == run["id"]), None)
            if approval:
                break
            time.sleep(0.05)
        assert approval, listing
        status, body = call("POST", f"{cluster.base(2)}/v1/approvals/{approval['id']}", OPERATOR, {"decision": "approve", "comment": "ok"})
        assert status == 200, body
        for _ in range(200):
            _, current = call("GET", f"{cluster.base(0)}/v1/runs/{run['id']}", OPERATOR)
            if current["status"] == "completed":
                break
            time.sleep(0.05)
        assert current["status"] == "completed", current
        assert [email["subject"] for email in stats(tools_port)["sent"] if email["subject"] == "2-approved"] == ["2-approved"]
    finally:
        cluster.stop()
        tools.terminate()


def test_events_published_on_any_node_start_each_triggered_run_once():
    tools, tools_port = start_tools()
    cluster = Cluster(nodes=3, tools_port=tools_port)
    try:
        # 30 orders, each published twice through different nodes with its dedup key.
        for n in range(30):
            for attempt in range(2):
                status, body = call(
                    "POST", f"{cluster.base(n + attempt)}/v1/events", OPERATOR,
                    {"type": "order.placed", "payload": {"n": n}, "dedup_key": f"order-{n}"})
                assert status in (200, 202), body
        expected = sorted(f"{n}-triggered" for n in range(30))
        deadline = time.time() + 60
        while time.time() < deadline:
            sent = sorted(email["subject"] for email in stats(tools_port)["sent"])
            if len(sent) >= len(expected):
                break
            time.sleep(0.1)
        time.sleep(1)  # a second run per event would have sent by now
        assert sorted(email["subject"] for email in stats(tools_port)["sent"]) == expected
        assert sql(cluster.schema, "SELECT count(*) FROM runs WHERE workflow = 'on_order'") == "30"
    finally:
        cluster.stop()
        tools.terminate()


def mcp_post(base, key, body, session=None):
    request = urllib.request.Request(f"{base}/mcp", method="POST", data=json.dumps(body).encode())
    request.add_header("authorization", f"Bearer {key}")
    request.add_header("content-type", "application/json")
    request.add_header("accept", "application/json, text/event-stream")
    if session:
        request.add_header("mcp-session-id", session)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("mcp-session-id"), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None, json.loads(error.read() or b"null")


def test_an_mcp_session_opened_on_one_node_works_on_the_others():
    cluster = Cluster(nodes=3)
    key = "cluster-mailer-key-00000001"
    try:
        status, session, body = mcp_post(cluster.base(0), key, {
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})
        assert status == 200 and session, body
        for index in (1, 2, 0):
            status, _, body = mcp_post(cluster.base(index), key, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session)
            assert status == 200, body
            assert [tool["name"] for tool in body["result"]["tools"]] == ["mail.sendEmail"]
        # Another agent cannot use it; an ended session ends everywhere.
        status, _, _ = mcp_post(cluster.base(1), "cluster-limited-key-0000001", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, session)
        assert status == 404
        request = urllib.request.Request(f"{cluster.base(2)}/mcp", method="DELETE")
        request.add_header("authorization", f"Bearer {key}")
        request.add_header("mcp-session-id", session)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204
        status, _, _ = mcp_post(cluster.base(0), key, {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, session)
        assert status == 404, "the node that opened it forgot it too"
    finally:
        cluster.stop()


def test_a_dollar_budget_holds_across_three_nodes():
    cluster = Cluster(nodes=3)
    budget = 100.0
    key = "cluster-spender-key-0000001"
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(lambda index: post_chat(cluster.base(index), key), range(90)))
        statuses = [status for status, _ in results]
        assert statuses.count(200) > 0 and statuses.count(429) > 0, statuses
        assert all(body["error"]["code"] == "budget_exceeded" for status, body in results if status == 429)
        # A burst is refused while reservations are held; once they are settled, calls one
        # after another (through one node, which waits for its own settlements before it
        # reserves again) go on until the budget is really used up.
        deadline = time.time() + 10
        while int(sql(cluster.schema, "SELECT COALESCE(SUM(reserved_nanos), 0) FROM budget_counters WHERE agent_id = 'spender'")) != 0:
            assert time.time() < deadline, "reservations were never settled"
            time.sleep(0.05)
        one_by_one = []
        for _ in range(30):
            status, body = post_chat(cluster.base(0), key)
            one_by_one.append(status)
            if status == 429:
                assert body["error"]["code"] == "budget_exceeded", body
                break
        assert one_by_one[-1] == 429, one_by_one
        # Each call reserves its worst case: the prompt's estimate plus max_tokens, at $1 a token.
        largest_reservation = 40.0
        for node, (process, _) in cluster.nodes.items():
            stop_interlock(process)  # flushes the usage ledger
        spent = int(sql(cluster.schema, "SELECT COALESCE(SUM(cost_nanos), 0) FROM usage_ledger WHERE agent_id = 'spender'")) / 1e9
        assert spent <= budget + largest_reservation, f"spent ${spent} against a ${budget} budget"
        assert spent > budget - largest_reservation, f"only ${spent} of ${budget} spent: the budget refused a call it had room for"
        # Each node alone would have let every node spend the whole budget.
        assert (statuses.count(200) + one_by_one.count(200)) * 5 <= budget + largest_reservation
    finally:
        cluster.stop()


def test_a_requests_per_minute_limit_holds_across_three_nodes():
    cluster = Cluster(nodes=3)
    try:
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(lambda index: post_chat(cluster.base(index), "cluster-limited-key-0000001"), range(90)))
        elapsed = time.time() - started
        statuses = [status for status, _ in results]
        allowed = statuses.count(200)
        # 30 a minute: a burst of 30, then one more every 2 s.
        assert 30 <= allowed <= 30 + int(elapsed / 2) + 1, f"{allowed} calls passed a 30 rpm limit in {elapsed:.1f} s"
        refused = [body for status, body in results if status == 429]
        assert len(refused) == 90 - allowed and all(body["error"]["code"] == "agent_rate_limited" for body in refused), statuses
    finally:
        cluster.stop()


SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts")


def test_nodes_ride_out_a_postgres_restart_without_losing_acknowledged_work():
    """PostgreSQL killed (as a crash would) and started again while runs send emails: the
    nodes keep serving what needs no store, refuse cleanly what does, and carry on once it
    is back, with no restart; every run completes and every email is sent once."""
    started = subprocess.run([os.path.join(SCRIPTS, "postgres"), "start"], capture_output=True, text=True, check=True).stdout
    settings = dict(line.removeprefix("export ").split("=", 1) for line in started.splitlines())
    url, directory = settings["INTERLOCK_TEST_POSTGRES_URL"], settings["INTERLOCK_TEST_POSTGRES_DIR"]
    tools, tools_port = start_tools(delay_ms=100)
    cluster = Cluster(nodes=2, tools_port=tools_port, postgres=url)
    steps = ["first", "second", "each-1", "each-2"]
    try:
        ids = []
        for n in range(30):
            status, run = call("POST", f"{cluster.base(n)}/v1/runs", OPERATOR, {"workflow": "mailing", "input": {"n": n}})
            assert status == 201, run
            ids.append(run["id"])
        while not stats(tools_port)["sent"]:
            time.sleep(0.02)
        subprocess.run([os.path.join(SCRIPTS, "postgres"), "kill", directory], check=True)
        # Authentication and routing need no store: a call is served (its ledger row waits).
        status, body = post_chat(cluster.base(0), "cluster-limited-key-0000001", "during the outage")
        assert status == 200, body
        # A budget cannot be checked: refused, cleanly, in the caller's format.
        begun = time.time()
        status, body = post_chat(cluster.base(1), "cluster-spender-key-0000001")
        assert status == 503 and body["error"]["code"] == "budget_unavailable", body
        assert time.time() - begun < 15
        subprocess.run([os.path.join(SCRIPTS, "postgres"), "resume", directory], check=True)
        pending = wait_until_completed(cluster.base, OPERATOR, ids)
        assert not pending, f"{len(pending)} runs did not complete after the restart"
        subjects = sorted(email["subject"] for email in stats(tools_port)["sent"])
        assert subjects == sorted(f"{n}-{step}" for n in range(30) for step in steps)
        status, body = post_chat(cluster.base(1), "cluster-spender-key-0000001")
        assert status == 200, body
        _, body = call("GET", f"{cluster.base(0)}/admin/v1/nodes", OPERATOR)
        assert [node["status"] for node in body["data"]] == ["up", "up"], body
        for process, _ in cluster.nodes.values():
            stop_interlock(process)
        # The call served during the outage was recorded once the store was back.
        assert int(sql(cluster.schema, "SELECT count(*) FROM usage_ledger WHERE agent_id = 'limited'", url)) == 1
    finally:
        cluster.stop()
        tools.terminate()
        subprocess.run([os.path.join(SCRIPTS, "postgres"), "stop", directory])


def test_a_node_whose_store_is_gone_still_stops():
    """SIGTERM with PostgreSQL gone for good: the node gives its writers the shutdown grace,
    says what it could not write, and exits instead of retrying forever."""
    started = subprocess.run([os.path.join(SCRIPTS, "postgres"), "start"], capture_output=True, text=True, check=True).stdout
    settings = dict(line.removeprefix("export ").split("=", 1) for line in started.splitlines())
    url, directory = settings["INTERLOCK_TEST_POSTGRES_URL"], settings["INTERLOCK_TEST_POSTGRES_DIR"]
    cluster = Cluster(nodes=1, postgres=url)
    try:
        subprocess.run([os.path.join(SCRIPTS, "postgres"), "kill", directory], check=True)
        status, body = post_chat(cluster.base(0), "cluster-limited-key-0000001", "its ledger row cannot be written")
        assert status == 200, body
        process = cluster.nodes["n1"][0]
        begun = time.time()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert time.time() - begun < 45, "shutdown took too long"
        cluster.log.flush()
        with open(cluster.log.name) as log:
            assert "records not written" in log.read()
    finally:
        for process, _ in cluster.nodes.values():
            if process.poll() is None:
                process.kill()
        subprocess.run([os.path.join(SCRIPTS, "postgres"), "stop", directory])
