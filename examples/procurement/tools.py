#!/usr/bin/env python3
"""The procurement example's tool servers, offline: an ERP (vendors, purchase orders) and a
mail service, as small REST APIs described by OpenAPI (erp.yaml, mail.yaml).

The mail service honours Idempotency-Key like a payment API does: a request repeated with
the same key returns the first answer and sends nothing again. GET /stats says what was
really sent (tests read it). Standard library only.

    python3 tools.py --port 9101
"""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VENDORS = {
    "acme-tools": {"id": "acme-tools", "name": "Acme Tools", "status": "approved", "account_manager": "jo.miller@acme-tools.example"},
    "globex": {"id": "globex", "name": "Globex", "status": "blocked", "account_manager": "sam.reed@globex.example"},
}
ORDERS = {
    "PO-1001": {"po_number": "PO-1001", "vendor": "acme-tools", "amount": 1250.00, "currency": "EUR", "status": "open"},
    "PO-1002": {"po_number": "PO-1002", "vendor": "acme-tools", "amount": 900.00, "currency": "EUR", "status": "open"},
}

lock = threading.Lock()
sent = []            # emails really sent
by_key = {}          # Idempotency-Key -> first answer
requests_seen = []   # (path, key) of every request, repeats included
delay_s = 0.0        # --delay-ms: how long an email takes to answer (after it was sent)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        with lock:
            requests_seen.append((self.path, None))
        if parts == ["stats"]:
            with lock:
                return self.answer(200, {"sent": list(sent), "requests": len(requests_seen)})
        if len(parts) == 2 and parts[0] == "vendors":
            vendor = VENDORS.get(parts[1])
            return self.answer(200, vendor) if vendor else self.answer(404, {"error": "no such vendor"})
        if len(parts) == 2 and parts[0] == "orders":
            order = ORDERS.get(parts[1])
            return self.answer(200, order) if order else self.answer(404, {"error": "no such purchase order"})
        self.answer(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        key = self.headers.get("idempotency-key")
        with lock:
            requests_seen.append((self.path, key))
            if self.path == "/emails":
                if key and key in by_key:
                    return self.answer(200, by_key[key])
                email = {"id": f"msg-{len(sent) + 1}", "to": body.get("to"), "subject": body.get("subject"), "status": "sent", "key": key}
                sent.append(email)
                if key:
                    by_key[key] = email
        if self.path == "/emails":
            # Sent, then slow to say so: a caller that dies now must not send it twice.
            time.sleep(delay_s)
            return self.answer(201, email)
        self.answer(404, {"error": "not found"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()
    global delay_s
    delay_s = args.delay_ms / 1000
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"procurement tools on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
