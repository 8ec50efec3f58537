#!/usr/bin/env python3
"""A webhook receiver for tokenvault's tests, verifying every delivery with
the `standardwebhooks` library from PyPI (an implementation tokenvault did
not write).

Listens on 127.0.0.1 (port 0 unless given) and prints `PORT <n>` once ready.

  POST /hook          a delivery: verified against the configured secrets;
                      answered 401 when no secret verifies it, else with the
                      next scripted status (200 when the script is empty)
  PUT  /_secrets      the secrets to verify with, one `whsec_…` per line
  PUT  /_script       statuses to answer next, e.g. "500,500,500"
  GET  /_received     every delivery as JSON: id, timestamp, verified,
                      status answered, type, the parsed body, received_at
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()
SECRETS: list = []
SCRIPT: list = []
RECEIVED: list = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length", "0")))

    def answer(self, status: int, payload: bytes = b"", kind: str = "text/plain"):
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_PUT(self):
        text = self.body().decode()
        with LOCK:
            if self.path == "/_secrets":
                SECRETS[:] = [line.strip() for line in text.splitlines() if line.strip()]
            elif self.path == "/_script":
                SCRIPT[:] = [int(s) for s in text.split(",") if s.strip()]
            else:
                return self.answer(404)
        self.answer(204)

    def do_GET(self):
        if self.path != "/_received":
            return self.answer(404)
        with LOCK:
            payload = json.dumps(RECEIVED).encode()
        self.answer(200, payload, "application/json")

    def do_POST(self):
        if self.path != "/hook":
            return self.answer(404)
        data = self.body()
        headers = {k: v for k, v in self.headers.items()}
        with LOCK:
            secrets = list(SECRETS)
        parsed, verified_with = None, None
        for index, secret in enumerate(secrets):
            try:
                parsed = Webhook(secret).verify(data, headers)
                verified_with = index
                break
            except WebhookVerificationError:
                continue
        with LOCK:
            status = 401 if parsed is None else (SCRIPT.pop(0) if SCRIPT else 200)
            RECEIVED.append(
                {
                    "id": headers.get("webhook-id") or headers.get("Webhook-Id"),
                    "timestamp": headers.get("webhook-timestamp") or headers.get("Webhook-Timestamp"),
                    "signatures": (headers.get("webhook-signature") or headers.get("Webhook-Signature") or "").count("v1,"),
                    "verified": parsed is not None,
                    "verified_with": verified_with,
                    "status": status,
                    "type": parsed.get("type") if parsed else None,
                    "body": parsed,
                    "received_at": time.time(),
                }
            )
        self.answer(status, b"ok" if status < 300 else b"no")


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
