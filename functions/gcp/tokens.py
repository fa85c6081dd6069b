"""Bearer tokens checked as API Gateway's JWT authorizer checks them, for the GCP API function
(which has no gateway in front of it) and for the dev pipeline's stand-in of that authorizer.

The issuer's signing keys are found through OpenID discovery
(`<issuer>/.well-known/openid-configuration` -> `jwks_uri`) and cached by PyJWT's
`PyJWKClient`; a token must be signed by one of them (RS256 or ES256), name this issuer
and audience, and be within its validity (30 s of clock skew allowed).
"""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import jwt

ALGORITHMS = ("RS256", "ES256")
LEEWAY_SECONDS = 30
KEYS_CACHE_SECONDS = 300
FETCH_TIMEOUT_SECONDS = 5


class InvalidToken(Exception):
    """The request's token is missing or not acceptable; the message says why (for a 401)."""


class IssuerUnavailable(Exception):
    """The issuer's keys could not be fetched: not the caller's fault (a 503)."""


class JwksTokenVerifier:
    def __init__(self, issuer: str, audience: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self._keys: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def subject(self, authorization: str | None) -> str:
        """The `sub` of the bearer token in an Authorization header value."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("send 'Authorization: Bearer <token>'")
        try:
            key = self._key_set().get_signing_key_from_jwt(token.strip())
            claims = jwt.decode(
                token.strip(),
                key.key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError as error:
            raise IssuerUnavailable(f"the issuer's keys could not be fetched: {error}") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as error:
            raise InvalidToken(f"the token was refused: {error}") from None
        return str(claims["sub"])

    def _key_set(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._keys is None:
                self._keys = jwt.PyJWKClient(
                    self._jwks_uri(),
                    cache_keys=True,
                    lifespan=KEYS_CACHE_SECONDS,
                    timeout=FETCH_TIMEOUT_SECONDS,
                )
            return self._keys

    def _jwks_uri(self) -> str:
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as answer:
                document: Any = json.load(answer)
        except (OSError, ValueError) as error:
            raise IssuerUnavailable(f"{url} could not be read: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("jwks_uri"), str):
            raise IssuerUnavailable(f"{url} names no jwks_uri")
        return document["jwks_uri"]
