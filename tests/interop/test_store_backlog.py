"""Calls are refused, not queued in memory without end, while their records cannot be written."""
import sqlite3
import tempfile
import urllib.request

import openai

from conftest import start_interlock, stop_interlock

KEY = "interop-backlog-key-000000001"


def test_calls_are_refused_past_the_store_backlog_and_nothing_is_lost():
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    process, base, db = start_interlock("store_backlog.yaml", stderr=log)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
        for text in ["one", "two"]:
            completion = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": text}])
            assert completion.choices[0].message.content == f"Mock answer to: {text}"
        refused = None
        try:
            client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "three"}])
        except openai.APIStatusError as error:
            refused = error
        assert refused is not None, "the third call was served past max_backlog_records"
        assert refused.status_code == 503
        assert refused.response.headers["retry-after"] == "1"
        assert refused.code == "store_backlog"
        with urllib.request.urlopen(base + "/metrics") as response:
            metrics = response.read().decode()
        assert "interlock_ledger_backlog 2" in metrics
        rejections = [line for line in metrics.splitlines() if line.startswith("interlock_store_backlog_rejections_total")]
        assert rejections and float(rejections[0].split()[-1]) >= 1
    finally:
        assert stop_interlock(process) == 0
    log.seek(0)
    assert "refusing calls" in log.read()
    # Shutdown wrote what waited; the refused call left no usage row.
    rows = sqlite3.connect(db).execute("SELECT status FROM usage_ledger ORDER BY ts_ms").fetchall()
    assert rows == [(200,), (200,)]
