#!/usr/bin/env python3
"""An agent worker: gets a user's access token from tokenvault before each task.

The same behaviour as examples/agent.rs:

- the API key (or the token file's current content) goes in
  ``authorization: Bearer ...`` metadata, added by a client interceptor;
- a token file is read again for every call, never cached: the kubelet
  replaces a projected service-account token before it expires;
- every call has a deadline (sent as ``grpc-timeout``);
- the token is kept in a small local cache until shortly before its ``expires_at``;
- ``UNAVAILABLE`` is retried with exponential backoff and jitter;
- ``FAILED_PRECONDITION`` (revoked, needs re-consent, user deleted) stops the
  worker with tokenvault's message: retrying cannot help;
- ``PERMISSION_DENIED`` with a ``google.rpc.ErrorInfo`` of reason
  ``CONSENT_REQUIRED`` names what the user has not granted (the connection,
  its provider, the missing capabilities and scopes): the worker hands it to
  the platform, which starts a step-up consent for that connection;
- the token is never printed, only its first 8 characters.

Environment: TOKENVAULT_ADDR (default http://127.0.0.1:50051, plain text),
TOKENVAULT_API_KEY (agent role) or TOKENVAULT_TOKEN_FILE (a file holding the
bearer credential instead, e.g. a projected service-account token for
audience "tokenvault", see helm/tokenvault/examples/agent-workload-identity.yaml;
read at start and for every call) -- exactly one of the two is required,
CONNECTION_ID (required), SCOPES
(comma-separated subset of the granted scopes), CAPABILITIES (comma-separated
capability names of the provider), MIN_TTL (seconds), TIMEOUT
(seconds per call, default 10), ITERATIONS and INTERVAL (tasks to run and
seconds between them, default 1 and 5).

Exit status: 0 on success, 2 when the connection cannot be used
(FAILED_PRECONDITION), 3 when the user must consent to more
(CONSENT_REQUIRED), 1 on any other failure.

    pip install -r requirements.txt && ./generate.sh
    TOKENVAULT_API_KEY=... CONNECTION_ID=... python agent.py
    TOKENVAULT_TOKEN_FILE=/var/run/secrets/tokenvault/token CONNECTION_ID=... python agent.py
"""

from __future__ import annotations

import collections
import datetime
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GEN = HERE / "gen"
if not (GEN / "tokenvault" / "v1" / "token_pb2.py").exists():
    sys.exit(f"agent: generated stubs missing; run {HERE / 'generate.sh'} first")
sys.path.insert(0, str(GEN))

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from tokenvault.v1 import token_pb2, token_pb2_grpc  # noqa: E402

# A cached token is used until this long before its expires_at (or MIN_TTL, if longer).
REFRESH_MARGIN = 30.0
# Attempts for one token while tokenvault answers UNAVAILABLE, and the backoff between them.
MAX_ATTEMPTS = 5
INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 5.0


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def number(name: str, default: int) -> int:
    value = env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        sys.exit(f"agent: {name} must be a whole number, not {value!r}")


def target(addr: str) -> str:
    """A grpc target from an http:// address (the Rust examples take URLs)."""
    if addr.startswith("https://"):
        sys.exit("agent: this example speaks plain text; use grpc.secure_channel for TLS")
    return addr.removeprefix("http://").rstrip("/")


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class Credential:
    """The bearer credential: TOKENVAULT_API_KEY, or TOKENVAULT_TOKEN_FILE read for every call."""

    def __init__(self, api_key: str | None, token_file: str | None) -> None:
        if api_key and token_file:
            raise ValueError("set TOKENVAULT_API_KEY or TOKENVAULT_TOKEN_FILE, not both")
        if not api_key and not token_file:
            raise ValueError(
                "TOKENVAULT_API_KEY (an agent API key) or TOKENVAULT_TOKEN_FILE "
                "(a file holding the token, e.g. a projected service-account token) must be set"
            )
        self._api_key = api_key
        self._token_file = Path(token_file) if token_file else None

    def current(self) -> str:
        """The credential as it is now (the file's content, re-read: the kubelet rotates it in place)."""
        if self._token_file is None:
            return self._api_key
        what = f"TOKENVAULT_TOKEN_FILE {str(self._token_file)!r}"
        try:
            token = self._token_file.read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read {what}: {error.strerror or error}") from None
        if not token:
            raise ValueError(f"{what} is empty")
        if not token.isascii() or not token.isprintable():
            raise ValueError(f"{what} must hold printable ASCII")
        return token


class BearerAuth(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <api key or token>`` to every call."""

    def __init__(self, credential: Credential) -> None:
        self._credential = credential

    def intercept_unary_unary(self, continuation, details, request):
        header = ("authorization", f"Bearer {self._credential.current()}")
        metadata = list(details.metadata or []) + [header]
        details = _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        return continuation(details, request)


class TokenCache:
    """Tokens by connection and scopes, kept until shortly before they expire."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, tuple[str, ...]], token_pb2.GetAccessTokenResponse] = {}

    def get(self, key, min_ttl: float):
        token = self._entries.get(key)
        if token is None:
            return None
        if token.expires_at.seconds - time.time() > max(REFRESH_MARGIN, min_ttl):
            return token
        return None

    def put(self, key, token) -> None:
        self._entries[key] = token

    def forget(self, key) -> None:
        self._entries.pop(key, None)


def fetch(stub, request, timeout: float):
    """One GetAccessToken, retried with backoff while tokenvault is unavailable."""
    backoff = INITIAL_BACKOFF
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return stub.GetAccessToken(request, timeout=timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == MAX_ATTEMPTS:
                raise
            delay = backoff * random.uniform(0.5, 1.0)
            print(
                f"agent: tokenvault unavailable ({error.details()}); "
                f"attempt {attempt}/{MAX_ATTEMPTS}, retrying in {int(delay * 1000)} ms",
                file=sys.stderr,
            )
            time.sleep(delay)
            backoff = min(backoff * 2, MAX_BACKOFF)
    raise AssertionError("unreachable")


def consent_required(error: grpc.RpcError) -> dict[str, str] | None:
    """The ErrorInfo metadata of a CONSENT_REQUIRED refusal, or None for any other error."""
    if error.code() != grpc.StatusCode.PERMISSION_DENIED:
        return None
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason == "CONSENT_REQUIRED" and info.domain == "tokenvault":
                return dict(info.metadata)
    return None


def describe(token) -> None:
    """Prints what the worker got, without the secret: only the token's first 8 characters."""
    expires_at = token.expires_at.ToDatetime(tzinfo=datetime.timezone.utc).replace(microsecond=0)
    remaining = max(0, int(token.expires_at.seconds - time.time()))
    print(f"  connection_id: {token.connection_id}")
    print(f"  token_type: {token.token_type}")
    print(f"  scopes: {' '.join(token.scopes)}")
    print(f"  expires_at: {expires_at.isoformat().replace('+00:00', 'Z')} (in {remaining} s)")
    print(f"  access_token: {token.access_token[:8]}… ({len(token.access_token)} characters)")


def main() -> int:
    connection_id = env("CONNECTION_ID")
    if not connection_id:
        print("agent: CONNECTION_ID must be set", file=sys.stderr)
        return 1
    try:
        credential = Credential(env("TOKENVAULT_API_KEY"), env("TOKENVAULT_TOKEN_FILE"))
        credential.current()  # fails early on a token file that cannot be read
    except ValueError as error:
        print(f"agent: {error}", file=sys.stderr)
        return 1
    scopes = sorted({s.strip() for s in (env("SCOPES") or "").split(",") if s.strip()})
    capabilities = sorted({c.strip() for c in (env("CAPABILITIES") or "").split(",") if c.strip()})
    min_ttl = number("MIN_TTL", 0)
    timeout = float(max(1, number("TIMEOUT", 10)))
    iterations = max(1, number("ITERATIONS", 1))
    interval = number("INTERVAL", 5)

    channel = grpc.intercept_channel(
        grpc.insecure_channel(target(env("TOKENVAULT_ADDR", "http://127.0.0.1:50051"))),
        BearerAuth(credential),
    )
    stub = token_pb2_grpc.TokenServiceStub(channel)
    cache = TokenCache()
    key = (connection_id, tuple(scopes), tuple(capabilities))
    request = token_pb2.GetAccessTokenRequest(
        connection_id=connection_id, scopes=scopes, capabilities=capabilities, min_ttl_seconds=min_ttl
    )

    try:
        for task in range(1, iterations + 1):
            if task > 1:
                time.sleep(interval)
            token = cache.get(key, min_ttl)
            source = "from the local cache"
            if token is None:
                try:
                    token = fetch(stub, request, timeout)
                except grpc.RpcError:
                    cache.forget(key)
                    raise
                cache.put(key, token)
                source = "from tokenvault"
            print(f"task {task}/{iterations}: token {source}")
            describe(token)
            # A real worker would now call the provider's API with
            # "authorization: {token.token_type} {token.access_token}".
    except grpc.RpcError as error:
        needed = consent_required(error)
        if needed is not None:
            print(f"agent: {error.details()}", file=sys.stderr)
            print(f"consent_required: connection {needed.get('connection_id')} at {needed.get('provider')}")
            print(f"  missing_capabilities: {needed.get('missing_capabilities', '')}")
            print(f"  missing_scopes: {needed.get('missing_scopes', '')}")
            # What the platform does with it: a step-up consent for this connection.
            missing = needed.get("missing_capabilities", "")
            print(
                f"  ask the user: StartConsent{{connection_id: {needed.get('connection_id')}, "
                f"capabilities: [{missing.replace(' ', ', ')}]}}, e.g. CONNECTION_ID={needed.get('connection_id')} "
                f"CAPABILITIES={missing.replace(' ', ',')} python platform.py"
            )
            return 3
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            print(f"agent: connection {connection_id} cannot be used: {error.details()}", file=sys.stderr)
            print("agent: the user must connect again (re-consent); stopping", file=sys.stderr)
            return 2
        print(f"agent: GetAccessToken failed: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except ValueError as error:  # the token file became unreadable between calls
        print(f"agent: {error}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
