"""A browser's part in the console's HTTP tests: cookies, the CSRF token from the cookie Tornado
sets, form posts, and no redirect followed (a test asserts where it leads)."""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import Message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@dataclass
class Reply:
    status: int
    body: str
    headers: Message

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


@dataclass
class Session:
    """One browser: its own cookie jar."""

    base: str
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)

    def __post_init__(self) -> None:
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())

    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as reply:
                return Reply(reply.status, reply.read().decode(errors="replace"), reply.headers)
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.read().decode(errors="replace"), exc.headers)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def post(self, path: str, fields: dict[str, str] | None = None, csrf: bool = True) -> Reply:
        """A form post; with *csrf*, the token a page's form carries (the ``_xsrf`` cookie's
        value, which Tornado accepts as the form field)."""
        form = dict(fields or {})
        if csrf:
            if self.cookie("_xsrf") is None:
                self.get("/login")  # any page sets it
            form["_xsrf"] = self.cookie("_xsrf") or ""
        return self.request("POST", path, urllib.parse.urlencode(form).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def login(self, name: str, password: str) -> Reply:
        return self.post("/login", {"name": name, "password": password, "next": "/"})
