"""The API token: from MENTOR_API_TOKEN, or made once, written to the data folder with mode 0600 and
printed once. Every endpoint needs it, unless the server runs with --insecure-no-auth on loopback."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("mentor")
TOKEN_ENV = "MENTOR_API_TOKEN"


def api_token(data_dir: Path) -> str:
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = data_dir / "api_token"
    if path.exists():
        return path.read_text().strip()
    token = "mentor-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("API token (shown once; kept in %s): %s", path, token)
    return token


def check(header: str | None, token: str) -> bool:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110)
        return False
    return secrets.compare_digest(value.strip().encode(), token.encode())
