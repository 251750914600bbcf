"""Secrets in URLs: refused where they would be stored, redacted wherever a URL is shown.

A params value is stored verbatim by DVC (dvc.lock, the run-cache, experiment refs) and by
MLflow (run params), so a URL carrying a password or token must be refused when params.yaml
is parsed, before any of them sees it (`url_secret`). Credentials for a download come from
`~/.netrc` (read by requests) or the environment (`request_auth`). Every URL or error text that
we print or log goes through `redact` first: a URI from the environment (MLFLOW_TRACKING_URI)
or a server's error message may still carry one.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters that carry a secret (exact names, any case): API keys, bearer tokens and
# the signatures of pre-signed S3/GCS/Azure URLs. Refused in params, masked when shown.
SECRET_QUERY_KEYS = frozenset(
    {
        "access_token", "api_key", "apikey", "auth", "key", "password", "secret", "sig",
        "signature", "token", "x-amz-credential", "x-amz-security-token", "x-amz-signature",
        "x-goog-credential", "x-goog-signature",
    }
)  # fmt: skip
# When showing a URL, mask more eagerly: any query parameter whose name mentions one of these.
_SECRETISH = re.compile(r"token|secret|passw|key|sig|credential|auth", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")

# Download credentials from the environment (HTTP basic auth, or a bearer token).
ENV_USER, ENV_PASSWORD, ENV_TOKEN = "CXR_HTTP_USER", "CXR_HTTP_PASSWORD", "CXR_HTTP_TOKEN"


def url_secret(url: str) -> str | None:
    """What secret `url` carries (`a user:password`, `the query parameter 'token'`), or None."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return "credentials (user:password@)" if parts.password is not None else "a user name@"
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in SECRET_QUERY_KEYS:
            return f"the query parameter {name!r}"
    return None


def redact_url(url: str) -> str:
    """`url` with its user info and secret-looking query values replaced by ***."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not parseable as a URL (a bad port, ...): hide everything after ://
        scheme, _, _ = url.partition("://")
        return f"{scheme}://{MASK}"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{host}{port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRETISH.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """`text` with every URL in it redacted (`redact_url`): for error messages and logs."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def strip_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """`url` without `user:password@`, and the user and password it carried (or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    netloc = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, parts.username, parts.password


def request_auth(env: dict[str, str] | None = None) -> tuple[dict[str, str], tuple | None]:
    """Headers and basic-auth pair for a download, from CXR_HTTP_TOKEN (bearer) or
    CXR_HTTP_USER + CXR_HTTP_PASSWORD; none set: requests falls back to ~/.netrc itself."""
    env = dict(os.environ) if env is None else env
    if env.get(ENV_TOKEN):
        return {"Authorization": f"Bearer {env[ENV_TOKEN]}"}, None
    if env.get(ENV_USER):
        return {}, (env[ENV_USER], env.get(ENV_PASSWORD, ""))
    return {}, None


def plain_http_warning(url: str, env: dict[str, str] | None = None) -> str | None:
    """A warning when credentials (the URL's own, or CXR_HTTP_*) would be sent over plain
    http, where anyone on the path can read them; None otherwise."""
    if not url.lower().startswith("http://"):
        return None
    headers, auth = request_auth(env)
    _, user, _ = strip_userinfo(url)
    if not (headers or auth or user):
        return None
    return (
        f"WARNING: {redact_url(url)} is plain http: the credentials (from the URL or "
        f"{ENV_USER}/{ENV_PASSWORD}/{ENV_TOKEN}) travel unencrypted; use https"
    )
