"""SIGTERM while a stream is in flight: the stream finishes, new connections are refused,
the usage ledger is flushed, and the process exits 0."""
import signal
import sqlite3
import time

import httpx
import openai

from conftest import start_interlock

EXPECTED = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"


def test_sigterm_lets_the_stream_finish_and_flushes_the_ledger():
    process, base, db = start_interlock("shutdown.yaml")
    client = openai.OpenAI(base_url=base + "/v1", api_key="interop-tester-key-000000001", max_retries=0)
    stream = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "count"}], stream=True)
    text = ""
    signalled_at = None
    refused = None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if signalled_at is None and text:
            process.send_signal(signal.SIGTERM)
            signalled_at = time.time()
            time.sleep(0.2)
            try:
                httpx.get(base + "/healthz", timeout=2, headers={"connection": "close"})
                refused = False
            except httpx.TransportError:
                refused = True
    assert text == EXPECTED, "the in-flight stream was cut short"
    assert refused is True, "a new connection was accepted after SIGTERM"
    assert process.wait(timeout=30) == 0
    # The ledger flush interval is 1 s; the record is there only because shutdown flushed it.
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT outcome, output_tokens FROM usage_ledger WHERE agent_id='tester'").fetchall()
    assert rows == [("success", 20)]
