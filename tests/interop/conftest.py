"""Starts the built `interlock` binary for the interop tests and stops it afterwards."""
import os
import signal
import subprocess
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def start_interlock(config, env=None, db=None, stderr=subprocess.PIPE):
    """Starts `interlock serve` on `db` (default: a fresh database); returns (process, base URL, database path).
    A test that lets the server log much passes a file as `stderr` (an unread pipe fills up and stalls it)."""
    binary = os.environ.get("INTERLOCK_BIN", os.path.join(HERE, "..", "..", ".build", "debug", "interlock"))
    db = db or os.path.join(tempfile.mkdtemp(prefix="interlock-interop-"), "interop.sqlite")
    process = subprocess.Popen(
        [binary, "serve", "--config", os.path.join(HERE, config)],
        stdout=subprocess.PIPE, stderr=stderr, env=dict(os.environ, INTERLOCK_DB=db, **(env or {})), text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        line = process.stdout.readline()
        if "listening on" in line:
            return process, line.strip().rsplit(" ", 1)[-1], db
        if not line and process.poll() is not None:
            raise RuntimeError("interlock exited early: " + (process.stderr.read() if process.stderr else "see its log"))
    process.kill()
    raise RuntimeError("interlock did not report its address")


def stop_interlock(process, timeout=30):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode


@pytest.fixture(scope="session")
def server():
    process, base, db = start_interlock("interop.yaml")
    yield {"base": base, "db": db, "process": process}
    assert stop_interlock(process) == 0, process.stderr.read()
