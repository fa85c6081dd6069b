"""A token issuer on loopback for the tests: OpenID discovery, a JWKS, and tokens it signs.

It plays Cognito, Auth0 or Google's identity platform just enough for a verifier to find
its keys the way it would find theirs, and for a test to mint good and bad tokens.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_ID = "test-key-1"


class OidcIssuer:
    def __init__(self, url: str, audience: str = "imagepipe") -> None:
        self.url = url
        self.audience = audience
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.requests = 0

    def token(self, subject: str = "user-1", **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + 600,
            **overrides,
        }
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": KEY_ID})

    def foreign_token(self, subject: str = "user-1") -> str:
        """Well-formed and naming this issuer, but signed by a key it never published."""
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        claims = {"iss": self.url, "aud": self.audience, "sub": subject, "exp": now + 600}
        return jwt.encode(claims, other, algorithm="RS256", headers={"kid": KEY_ID})

    def documents(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return {
            "/.well-known/openid-configuration": {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks.json",
            },
            "/jwks.json": {"keys": [{**public, "kid": KEY_ID, "use": "sig", "alg": "RS256"}]},
        }


@contextmanager
def oidc_issuer(audience: str = "imagepipe") -> Iterator[OidcIssuer]:
    """An issuer served on 127.0.0.1 for the block's duration."""
    holder: dict[str, OidcIssuer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer = holder["issuer"]
            issuer.requests += 1
            document = issuer.documents().get(self.path)
            body = json.dumps(document).encode() if document is not None else b"{}"
            self.send_response(200 if document is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["issuer"] = OidcIssuer(f"http://127.0.0.1:{server.server_address[1]}", audience)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield holder["issuer"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
