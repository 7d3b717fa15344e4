"""The audit log of the running server: `interlock audit verify` and `export`, checked
independently here (RFC 8785 canonical JSON and SHA-256 in Python), and every kind of
tampering found at its record."""
import hashlib
import json
import os
import sqlite3
import subprocess
import tempfile
import time

import openai
import pytest

from conftest import HERE

KEY = "interop-tester-key-000000001"
BINARY = os.environ.get("INTERLOCK_BIN", os.path.join(HERE, "..", "..", ".build", "debug", "interlock"))


def audit(*arguments):
    return subprocess.run([BINARY, "audit", *arguments], capture_output=True, text=True)


def canonical(value):
    # RFC 8785 for what audit records hold (strings, integers, null, arrays, ASCII keys):
    # sorted keys, no whitespace, UTF-8.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.fixture
def snapshot(server):
    """A consistent copy of the running server's store, after some audited calls."""
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "audit me"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["base"] + "/v1", api_key="wrong-key-0000000000", max_retries=0).chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}])
    time.sleep(0.4)  # two audit flush intervals
    path = os.path.join(tempfile.mkdtemp(prefix="interlock-audit-"), "copy.sqlite")
    with sqlite3.connect(server["db"]) as source, sqlite3.connect(path) as target:
        source.backup(target)
    return path


def records(path):
    exported = audit("export", "--store", path)
    assert exported.returncode == 0, exported.stderr
    return [json.loads(line) for line in exported.stdout.splitlines()]


def test_exported_chain_verifies_independently(snapshot):
    verified = audit("verify", "--store", snapshot)
    assert verified.returncode == 0, verified.stderr
    rows = records(snapshot)
    assert len(rows) >= 2
    assert f"{len(rows)} records" in verified.stdout
    previous = "0" * 64
    for index, row in enumerate(rows, start=1):
        assert row["seq"] == index
        assert row["prev_hash"] == previous
        body = {key: value for key, value in row.items() if key != "hash"}
        assert hashlib.sha256(canonical(body)).hexdigest() == row["hash"]
        previous = row["hash"]
    assert rows[-1]["hash"] in verified.stdout
    assert any(r["action"] == "model.call" and r["decision"] == "allow" and r["agent"] == "tester" for r in rows)
    refused = [r for r in rows if r["action"] == "auth.failed"]
    assert refused and refused[-1]["reason"] == "invalid_api_key" and refused[-1]["agent"] is None
    # Arguments appear only as a hash.
    assert all("audit me" not in json.dumps(r) for r in rows)


@pytest.mark.parametrize("tamper,kind", [
    ("UPDATE audit_log SET decision = 'allow', reason = NULL WHERE seq = (SELECT MAX(seq) FROM audit_log WHERE action = 'auth.failed')", "altered"),
    ("DELETE FROM audit_log WHERE seq = 2", "removed"),
    # Reordered: records 2 and 3 swap places in storage.
    ("UPDATE audit_log SET pos = -pos WHERE seq IN (2, 3); UPDATE audit_log SET pos = 5 + pos WHERE pos IN (-2, -3)", "record 3"),
])
def test_tampering_is_found_at_its_record(snapshot, tamper, kind):
    with sqlite3.connect(snapshot) as connection:
        assert connection.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0] >= 4
        connection.executescript(tamper)
    verified = audit("verify", "--store", snapshot)
    assert verified.returncode == 1
    assert "audit chain broken at record" in verified.stderr
    if kind:
        assert kind in verified.stderr


def test_verify_without_a_store_is_a_clear_error(tmp_path):
    missing = audit("verify", "--store", str(tmp_path / "none.sqlite"))
    assert missing.returncode == 2
    assert "no store at" in missing.stderr
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello")
    wrong = audit("verify", "--store", str(not_a_store))
    assert wrong.returncode == 2
    assert "is not an Interlock store" in wrong.stderr
    assert not_a_store.read_text() == "hello"
