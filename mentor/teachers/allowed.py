"""The one rule for the OpenAI-compatible servers a job may send its data and an API key to: a
teacher (`openai:MODEL@URL`) and a score_model grader's judge (`MODEL@URL`) alike.

A URL a request names is allowed only when it is one of the base URLs the owner listed (the
server's `--allowed-teacher-urls`; outside a server, `MENTOR_GRADERS_ALLOWED_JUDGE_URLS` for
judges). Loopback is no exception: a port on this machine may be a database or an admin API, so it
is allowed only when listed. A server the owner chose alone (`OPENAI_BASE_URL`, a judge base URL)
is not checked here: nobody else named it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from mentor.errors import MentorError


def canonical(url: str) -> tuple[str, str, int | None, str] | None:
    """(scheme, host, port, path) of an http(s) base URL, compared case-blind where URLs are, a final
    slash dropped; None for what cannot name one plainly (user info, a query, a fragment, '.' or '..'
    in the path, a port that is no number)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # "http://[::1", a port that is no number
        return None
    segments = parts.path.split("/")
    if (parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username is not None
            or parts.password is not None or parts.query or parts.fragment or "." in segments or ".." in segments):
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port, parts.path.rstrip("/")


def is_allowed(url: str, allowed: Iterable[str]) -> bool:
    """Whether `url` is one of the `allowed` base URLs."""
    mine = canonical(url)
    return mine is not None and any(mine == canonical(str(a)) for a in allowed)


def check_allowed(url: str, allowed: Iterable[str], what: str, how: str) -> str:
    """`url` without its final slash, or MentorError naming what was refused and `how` to allow it."""
    allowed = [str(a).rstrip("/") for a in allowed]
    if canonical(url) is None:
        raise MentorError(f"{url!r} is not a plain http(s) base URL (no user, query, fragment or '..')")
    if not is_allowed(url, allowed):
        raise MentorError(f"{what} {url.rstrip('/')} is not allowed: it would get the data and the API key, and "
                          f"only listed servers may (loopback too); listed: {', '.join(allowed) or 'none'}. {how}")
    return url.rstrip("/")
