#!/usr/bin/env python3
"""The platform side: connects a user's account through tokenvault.

The same behaviour as examples/platform.rs: with no argument it calls
StartConsent, prints the authorization URL the user's browser must open, and
serves the return_url page itself: when the browser comes back with
status=approved and a one-time completion_code, it calls ConfirmConsent for the
same user (the step that binds the grant to the user signed in at the
platform) and prints the connection id. ``--list`` shows ListConnections for the tenant and user;
``--disconnect ID`` calls Disconnect.

Environment: TOKENVAULT_ADDR (default http://127.0.0.1:50051, plain text),
TOKENVAULT_API_KEY (platform role, required), TENANT (default acme), USER (the
user id; shells set it to the login name), PROVIDER (default demo),
CAPABILITIES (comma-separated, default calendar.read), RETURN_URL (its origin
must be in consent.allowed_return_origins; default
http://localhost:3000/connected; this script listens on its host and port),
CONNECTION_ID (re-consent or add capabilities to that connection).

Output lines ``authorization_url: ...`` and ``connection_id: ...`` are meant
to be read by scripts too. Exit status: 0 when connected, 1 otherwise.

    pip install -r requirements.txt && ./generate.sh
    TOKENVAULT_API_KEY=... USER=alice python platform.py
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
GEN = HERE / "gen"
if not (GEN / "tokenvault" / "v1" / "consent_pb2.py").exists():
    sys.exit(f"platform: generated stubs missing; run {HERE / 'generate.sh'} first")
# This script's directory is first on sys.path, where this file would shadow the
# standard library's `platform` module for any library that imports it: put the
# generated stubs there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(GEN)
else:
    sys.path.insert(0, str(GEN))

import grpc  # noqa: E402
from tokenvault.v1 import (  # noqa: E402
    common_pb2,
    connection_pb2,
    connection_pb2_grpc,
    consent_pb2,
    consent_pb2_grpc,
)

CALL_TIMEOUT = 10.0


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def target(addr: str) -> str:
    if addr.startswith("https://"):
        sys.exit("platform: this example speaks plain text; use grpc.secure_channel for TLS")
    return addr.removeprefix("http://").rstrip("/")


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class BearerAuth(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <api key>`` to every call."""

    def __init__(self, api_key: str) -> None:
        self._header = ("authorization", f"Bearer {api_key}")

    def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or []) + [self._header]
        details = _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        return continuation(details, request)


def user() -> str:
    value = env("USER")
    if not value:
        sys.exit("platform: USER is not set (the user id at the platform)")
    return value


class ReturnPage:
    """The platform page named by return_url, served once on its own port."""

    def __init__(self, return_url: str) -> None:
        url = urllib.parse.urlsplit(return_url)
        host = "127.0.0.1" if url.hostname in (None, "localhost") else url.hostname
        port = url.port or (443 if url.scheme == "https" else 80)
        self.path = url.path or "/"
        self.arrived = threading.Event()
        self.query: dict[str, str] = {}
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                target = urllib.parse.urlsplit(self.path)
                if target.path != page.path:
                    self.send_error(404)
                    return
                if not page.arrived.is_set():
                    page.query = dict(urllib.parse.parse_qsl(target.query))
                    page.arrived.set()
                body = b"Thank you, you can close this window."
                self.send_response(200)
                self.send_header("content-type", "text/plain; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # the query holds a one-time code
                pass

        self.server = HTTPServer((host, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, timeout: float) -> dict[str, str] | None:
        arrived = self.arrived.wait(timeout)
        self.server.shutdown()
        return self.query if arrived else None


def connect(channel) -> int:
    stub = consent_pb2_grpc.ConsentServiceStub(channel)
    capabilities = [c.strip() for c in (env("CAPABILITIES") or "calendar.read").split(",") if c.strip()]
    return_url = env("RETURN_URL", "http://localhost:3000/connected")
    # Listening before StartConsent, so that no redirect arrives before it is served.
    page = ReturnPage(return_url)
    user_id = user()
    started = stub.StartConsent(
        consent_pb2.StartConsentRequest(
            tenant_id=env("TENANT", "acme"),
            user_id=user_id,
            provider=env("PROVIDER", "demo"),
            capabilities=capabilities,
            return_url=return_url,
            connection_id=env("CONNECTION_ID", ""),
        ),
        timeout=CALL_TIMEOUT,
    )
    print(f"consent_id: {started.consent_id}")
    print(f"scopes: {' '.join(started.scopes)}")
    print("Open this URL in the user's browser:")
    print(f"authorization_url: {started.authorization_url}", flush=True)

    expires_at = started.expires_at.seconds or time.time() + 600
    print("waiting for the browser to come back to the return URL…", flush=True)
    back = page.wait(max(0.0, expires_at - time.time()) + 5)
    if back is None:
        print("platform: consent expired before the user came back", file=sys.stderr)
        return 1
    if back.get("consent_id") != started.consent_id:
        print("platform: the browser came back for another consent", file=sys.stderr)
        return 1
    status = back.get("status")
    if status == "approved":
        # The user approved at the provider; this platform, which knows the
        # browser is its signed-in user, now confirms (in a web application this
        # runs in the return page's request handler, inside the user's session).
        confirmed = stub.ConfirmConsent(
            consent_pb2.ConfirmConsentRequest(
                consent_id=started.consent_id,
                completion_code=back.get("completion_code", ""),
                user_id=user_id,
            ),
            timeout=CALL_TIMEOUT,
        )
        print("confirmed")
        print("connected")
        print(f"connection_id: {confirmed.connection_id}")
        return 0
    if status == "connected":  # a tenant in consent.tenants_without_confirmation
        print("connected")
        print(f"connection_id: {back.get('connection_id', '')}")
        return 0
    print(f"platform: consent {status or 'ended'}: {back.get('error', '')}", file=sys.stderr)
    return 1


def print_connection(connection) -> None:
    status = common_pb2.ConnectionStatus.Name(connection.status)
    line = f"{connection.id}  {connection.provider}  {status}  [{' '.join(connection.granted_scopes)}]"
    if connection.HasField("account"):
        line += f"  as {connection.account.display or connection.account.subject}"
    if connection.status_reason:
        line += f"  ({connection.status_reason})"
    print(line)


def list_connections(channel) -> int:
    stub = connection_pb2_grpc.ConnectionServiceStub(channel)
    tenant, user_id = env("TENANT", "acme"), user()
    page_token, count = "", 0
    while True:
        page = stub.ListConnections(
            connection_pb2.ListConnectionsRequest(
                tenant_id=tenant, user_id=user_id, page_size=100, page_token=page_token
            ),
            timeout=CALL_TIMEOUT,
        )
        for connection in page.connections:
            print_connection(connection)
            count += 1
        if not page.next_page_token:
            break
        page_token = page.next_page_token
    print(f"{count} connection(s) for tenant {tenant}, user {user_id}")
    return 0


def disconnect(channel, connection_id: str) -> int:
    stub = connection_pb2_grpc.ConnectionServiceStub(channel)
    response = stub.Disconnect(connection_pb2.DisconnectRequest(connection_id=connection_id), timeout=CALL_TIMEOUT)
    print("disconnected (revoked at the provider too, in the background)")
    if response.HasField("connection"):
        print_connection(response.connection)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="tokenvault platform example")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--list", action="store_true", help="list the user's connections")
    group.add_argument("--disconnect", metavar="CONNECTION_ID", help="disconnect (revoke) a connection")
    args = parser.parse_args()

    api_key = env("TOKENVAULT_API_KEY")
    if not api_key:
        print("platform: TOKENVAULT_API_KEY is not set (a platform key)", file=sys.stderr)
        return 1
    channel = grpc.intercept_channel(
        grpc.insecure_channel(target(env("TOKENVAULT_ADDR", "http://127.0.0.1:50051"))),
        BearerAuth(api_key),
    )
    try:
        if args.list:
            return list_connections(channel)
        if args.disconnect:
            return disconnect(channel, args.disconnect)
        return connect(channel)
    except grpc.RpcError as error:
        print(f"platform: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
