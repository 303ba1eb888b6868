"""Who is asking: bearer tokens from the settings (each with a name, which the audit table records), a session
cookie for the page (set by /login from the same token), or nobody in particular in the loopback demo."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from worklist.problems import NotAuthenticated, Problem

DEMO_IDENTITY = "loopback-demo"  # no token configured: the server only binds to loopback (see triage.cli)
SINGLE_TOKEN_NAME = "api-token"
COOKIE_NAME = "cxr_triage_session"
COOKIE_MAX_AGE_S = 12 * 3600
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

bearer = HTTPBearer(auto_error=False, description="TRIAGE_API_TOKEN (or one of TRIAGE_API_TOKENS)")


def parse_tokens(api_token: str = "", api_tokens: str = "") -> dict[str, str]:
    """``api_token`` is one anonymous token (named "api-token"); ``api_tokens`` is ``name=token,name=token``."""
    tokens: dict[str, str] = {}
    if api_token:
        tokens[SINGLE_TOKEN_NAME] = api_token
    for part in (p.strip() for p in api_tokens.split(",")):
        if not part:
            continue
        name, sep, token = part.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not token or not _NAME.match(name):
            raise ValueError("TRIAGE_API_TOKENS must be name=token pairs separated by commas "
                             "(names: letters, digits, . _ @ -)")
        tokens[name] = token
    return tokens


@dataclass
class Tokens:
    by_name: dict[str, str]
    csrf_secret: bytes = field(default_factory=lambda: os.urandom(32))

    def __post_init__(self) -> None:
        if self.by_name:  # several web processes behind one proxy must agree on the form tokens
            material = "|".join(f"{n}={t}" for n, t in sorted(self.by_name.items()))
            self.csrf_secret = hashlib.sha256(b"cxr-triage-csrf|" + material.encode()).digest()

    @property
    def enabled(self) -> bool:
        return bool(self.by_name)

    def identify(self, token: str) -> str | None:
        found = None
        for name, expected in self.by_name.items():  # compare with all of them: no early exit, no timing hint
            if secrets.compare_digest(token.encode(), expected.encode()):
                found = name
        return found

    def csrf_token(self, identity: str) -> str:
        return hmac.new(self.csrf_secret, f"csrf|{identity}".encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, identity: str, token: str | None) -> None:
        if not token or not hmac.compare_digest(token, self.csrf_token(identity)):
            raise Problem(403, "the form has expired or did not come from this site; reload the page")


SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def same_origin(request: Request) -> bool:
    """A browser names the page that sent a request in Origin; a change sent with our cookie from another site
    (the cookie is SameSite=strict, this is the second lock) must come from our own origin."""
    origin = request.headers.get("origin")
    if origin is None or request.method in SAFE_METHODS:
        return True
    return origin.rstrip("/").split("://", 1)[-1] == request.headers.get("host", "")


def identity(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> str:
    """The caller's name for the audit table; raises NotAuthenticated (401 or a redirect to /login)."""
    from db.web_sessions import session_actor

    tokens: Tokens = request.app.state.tokens
    if not tokens.enabled:
        return DEMO_IDENTITY
    if credentials is not None:
        name = tokens.identify(credentials.credentials)
        if name is None:
            raise NotAuthenticated()
        return name
    with request.app.state.sessions() as db:
        name = session_actor(db, request.cookies.get(COOKIE_NAME))
    if name is None or name not in tokens.by_name:  # a token removed from the settings ends its sessions
        raise NotAuthenticated()
    if not same_origin(request):
        raise Problem(403, "this change came from another site")
    return name
