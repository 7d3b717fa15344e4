"""Starts the built `interlock` binary for the interop tests and stops it afterwards."""
import os
import signal
import subprocess
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session")
def server():
    binary = os.environ.get("INTERLOCK_BIN", os.path.join(HERE, "..", "..", ".build", "debug", "interlock"))
    workdir = tempfile.mkdtemp(prefix="interlock-interop-")
    db = os.path.join(workdir, "interop.sqlite")
    env = dict(os.environ, INTERLOCK_DB=db)
    process = subprocess.Popen(
        [binary, "serve", "--config", os.path.join(HERE, "interop.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    deadline = time.time() + 60
    base = None
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                raise RuntimeError("interlock exited early: " + process.stderr.read())
            continue
        if "listening on" in line:
            base = line.strip().rsplit(" ", 1)[-1]
            break
    assert base, "interlock did not report its address"
    yield {"base": base, "db": db, "process": process}
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, process.stderr.read()
