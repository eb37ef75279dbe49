"""A webhook receiver for Kiln's tests: verifies every delivery with the reference
Standard Webhooks library (PyPI `standardwebhooks`, pinned in scripts/python-tools.txt)
against each secret it was given, records what came, and answers as told.

Prints `PORT <n>` once listening. Control: `POST /_control` with any of
`{"secrets": [...], "status": 200, "delay_ms": 0, "now": <unix seconds>}` (`now` is the
test's clock: the library checks the timestamp against it); `GET /_log` returns every
delivery received: headers, body, and which secrets verified it.
"""

import json
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks.webhooks as library
from standardwebhooks import Webhook


class TestClock(datetime):
    """The library reads `datetime.now`; the test's clock stands in for it."""

    fixed = None

    @classmethod
    def now(cls, tz=None):
        if cls.fixed is None:
            return datetime.now(tz)
        return datetime.fromtimestamp(cls.fixed, tz=timezone.utc)


library.datetime = TestClock

lock = threading.Lock()
state = {"secrets": [], "status": 200, "delay_ms": 0}
received = []


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
        with lock:
            self.answer(200, received)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/_control":
            with lock:
                update = json.loads(body)
                if "now" in update:
                    TestClock.fixed = update.pop("now")
                state.update(update)
            return self.answer(200, {"ok": True})
        headers = {k.lower(): v for k, v in self.headers.items()}
        with lock:
            secrets, status, delay_ms = list(state["secrets"]), state["status"], state["delay_ms"]
        verified, errors = [], []
        for index, secret in enumerate(secrets):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(index)
            except Exception as error:  # the library's verification errors
                errors.append(f"{index}: {error}")
        record = {
            "path": self.path,
            "id": headers.get("webhook-id"),
            "timestamp": headers.get("webhook-timestamp"),
            "signature": headers.get("webhook-signature"),
            "verified": verified,
            "errors": errors,
            "body": json.loads(body),
            "answered": status,
        }
        if delay_ms:
            time.sleep(delay_ms / 1000)
        with lock:
            received.append(record)
        self.answer(status, {"received": record["id"]})


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
