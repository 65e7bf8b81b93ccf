"""The console's pages and actions: Tornado handlers over the Python API (``Client``).

Every page needs a login; every action checks its role on the server (a hidden button is not
a check), carries the CSRF token Tornado puts in each form (``xsrf_cookies``), and is written
to the audit stream with who did it, from where, and how it ended. Templates escape every
value they show (Tornado's autoescape); the live log is sent as JSON and shown with
``textContent``, so a script's output is text in the page, never markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote

import redis
import tornado.web

from workerpool.client import Client
from workerpool.console import views
from workerpool.console.accounts import (
    ADMIN,
    OPERATOR,
    VIEWER,
    Account,
    Accounts,
    LoginLimiter,
    allows,
)
from workerpool.core import audit
from workerpool.core.errors import Infrastructure, WorkerPoolError
from workerpool.core.printable import printable
from workerpool.core.snapshot import read_snapshot, status_view
from workerpool.server import metrics

T = TypeVar("T")
SESSION_COOKIE = "workerpool_session"
SESSION_HOURS = 12
LOG_BLOCK_MS = 1000  # how long one read of a live log waits for a new line


@dataclass
class Console:
    """What every handler shares: the API, the accounts, and where Flower runs."""

    client: Client
    accounts: Accounts
    limiter: LoginLimiter
    flower_url: str | None = None

    @property
    def redis(self) -> redis.Redis:
        return self.client.redis

    @functools.cached_property
    def registry(self) -> Any:
        return metrics.registry(lambda: self.client.guard(lambda: metrics.read(self.redis)))


def _fingerprint(account: Account) -> str:
    """Ties a session to the password it was opened with: a changed password ends it."""
    return hashlib.sha256(account.password_hash.encode()).hexdigest()[:16]


def local_path(target: str) -> str:
    """*target* if it is a path on this console, else ``/``: no redirect leads off the site
    (``//host`` and ``/\\host`` are other hosts to a browser)."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


class Base(tornado.web.RequestHandler):
    """Login, roles, audit and the headers every page carries."""

    console: Console

    def initialize(self, console: Console) -> None:
        self.console = console
        self._started = time.perf_counter()

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; script-src 'self'; style-src 'self'; "
                        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Any:
        if not self._headers_written:  # the bench reads the server's own time per page
            elapsed = (time.perf_counter() - self._started) * 1000
            self.set_header("Server-Timing", f"app;dur={elapsed:.1f}")
        return super().finish(chunk)

    def get_current_user(self) -> Account | None:
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_HOURS / 24)
        if raw is None:
            return None
        try:
            session = json.loads(raw)
            name, issued, print_ = str(session["u"]), float(session["t"]), str(session["f"])
        except (ValueError, KeyError, TypeError):
            return None
        self.console.accounts.reload_if_changed()
        account = self.console.accounts.get(name)
        if account is None or print_ != _fingerprint(account) or \
                time.time() - issued > SESSION_HOURS * 3600:
            return None
        return account

    @property
    def account(self) -> Account:
        return cast(Account, self.current_user)

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(views=views, printable=printable, now=time.time(),
                         flower_url=self.console.flower_url,
                         can=lambda role: self.current_user is not None
                         and allows(self.account.role, role),
                         VIEWER=VIEWER, OPERATOR=OPERATOR, ADMIN=ADMIN, quote=quote)
        return namespace

    def require(self, role: str) -> None:
        """Stop the request unless a user with *role* (or above) is logged in: to the login
        page for a page, 401 for an action or the API; 403 for a role too low."""
        if self.current_user is None:
            page = not self.request.path.startswith("/api")
            if self.request.method in ("GET", "HEAD") and page:
                self.redirect("/login?next=" + quote(self.request.uri or "/"))
                raise tornado.web.Finish()
            raise tornado.web.HTTPError(401, reason="log in first")
        if not allows(self.account.role, role):
            if self.request.method == "POST":
                self.audit(self.request.path, "", "forbidden", f"needs {role}")
            raise tornado.web.HTTPError(403, reason=f"this needs the {role} role; you are "
                                        f"{self.account.role}")

    def audit(self, action: str, target: str, outcome: str = "ok", detail: str = "") -> None:
        user = self.current_user
        who, role = (user.name, user.role) if isinstance(user, Account) else ("-", "-")
        with contextlib.suppress(redis.RedisError):  # the action itself reports the outage
            audit.record(self.console.redis, who, role, action, target, outcome, detail,
                         self.request.remote_ip or "")

    def api(self, action: Callable[[], T]) -> T:
        """Call the API; an outage becomes a 503 page in one line."""
        try:
            return self.console.client.guard(action)
        except Infrastructure as exc:
            raise tornado.web.HTTPError(503, reason=str(exc)) from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        if "exc_info" in kwargs:
            error = kwargs["exc_info"][1]
            if isinstance(error, tornado.web.HTTPError):
                reason = error.reason or error.log_message or reason
            if status_code == 403 and "xsrf" in str(error).lower():
                reason = "the form's CSRF token is missing or wrong; reload the page and try again"
        if self.request.path.startswith("/api") or "json" in self.request.headers.get("Accept", ""):
            self.finish({"error": reason})
            return
        self.render("error.html", status=status_code, message=reason)


class Login(Base):
    def get(self) -> None:
        self.render("login.html", error="", next=self.get_argument("next", "/"), name="")

    def post(self) -> None:
        name = self.get_argument("name", "")
        target = local_path(self.get_argument("next", "/"))
        who = self.request.remote_ip or "-"
        wait = self.api(lambda: self.console.limiter.blocked_for(who))
        if wait:
            self.set_status(429)
            self.render("login.html", error=f"too many failed logins from your address; try "
                        f"again in {wait} s", next=target, name=name)
            return
        self.console.accounts.reload_if_changed()
        account = self.console.accounts.authenticate(name, self.get_argument("password", ""))
        if account is None:
            self.api(lambda: self.console.limiter.failed(who))
            audit.record(self.console.redis, name[:64] or "-", "-", "login", "", "refused",
                         "wrong name or password", who)
            self.set_status(401)
            self.render("login.html", error="wrong name or password", next=target, name=name)
            return
        self.api(lambda: self.console.limiter.succeeded(who))
        session = json.dumps({"u": account.name, "t": time.time(), "f": _fingerprint(account)})
        self.set_signed_cookie(SESSION_COOKIE, session, expires_days=None, httponly=True,
                               samesite="Strict")
        self._current_user = account
        self.audit("login", "")
        self.redirect(target)


class Logout(Base):
    def post(self) -> None:
        self.require(VIEWER)
        self.audit("logout", "")
        self.clear_cookie(SESSION_COOKIE)
        self.redirect("/login")


class PoolsPage(Base):
    """Infrastructure -> Worker Pools, with Add Worker Pool."""

    def get(self) -> None:
        self.require(VIEWER)
        self.render("pools.html", page=self.api(lambda: views.pools_page(self.console.redis)),
                    add_error="", add_name="")

    def post(self) -> None:
        self.require(ADMIN)
        name = self.get_argument("name", "")
        try:
            pool = self.api(lambda: self.console.client.pools.add(name))
        except WorkerPoolError as exc:
            self.audit("pool.add", name, "refused", str(exc))
            self.set_status(400)
            self.render("pools.html", page=self.api(lambda: views.pools_page(self.console.redis)),
                        add_error=str(exc), add_name=name)
            return
        self.audit("pool.add", pool.name)
        self.redirect(f"/pools/{quote(pool.slug)}")


class PoolPage(Base):
    """The pool form, its workers, pause/resume and remove."""

    def get(self, slug: str) -> None:
        self.require(VIEWER)
        self._show(slug)

    def _show(self, slug: str, error: str = "", notice: str = "") -> None:
        page = self.api(lambda: views.pool_page(self.console.redis, slug))
        if page is None:
            raise tornado.web.HTTPError(404, reason=f"no pool with slug {slug!r}")
        self.render("pool.html", page=page, error=error, notice=notice)

    def post(self, slug: str, action: str = "edit") -> None:
        needed = ADMIN if action in ("edit", "remove") else OPERATOR
        self.require(needed)
        pools = self.console.client.pools
        arg = self.get_argument
        actions: dict[str, Callable[[], Any]] = {
            "edit": lambda: pools.edit(
                slug, name=arg("name", None), description=arg("description", None),
                make_default=arg("default", "") == "1",
                requires=views.words(arg("requires", "")),
                health_check=arg("health_check", ""),
                max_running=views.number(arg("max_running", "0"), "max running")),
            "pause": lambda: pools.pause(slug, arg("reason", "")),
            "resume": lambda: pools.resume(slug),
            "remove": lambda: pools.remove(slug),
        }
        if action not in actions:
            raise tornado.web.HTTPError(404, reason=f"no pool action {action!r}")
        try:
            result = self.api(actions[action])
        except WorkerPoolError as exc:
            self.audit(f"pool.{action}", slug, "refused", str(exc))
            self.set_status(400)
            self._show(slug, error=str(exc))
            return
        self.audit(f"pool.{action}", slug, detail=views.change_detail(action, self.request))
        if action == "remove":
            self.redirect("/?removed=" + quote(result.name))
        else:
            self.redirect(f"/pools/{quote(result.slug)}")


class Drain(Base):
    def post(self) -> None:
        self.require(OPERATOR)
        name = self.get_argument("worker")
        back = self.get_argument("back", "/")
        try:
            worker = self.api(lambda: self.console.client.workers.drain(name))
        except WorkerPoolError as exc:
            self.audit("worker.drain", name, "refused", str(exc))
            raise tornado.web.HTTPError(400, reason=str(exc)) from None
        self.audit("worker.drain", worker.name, detail=f"pool {worker.pool}")
        self.redirect(local_path(back))


class BuiltinPage(Base):
    def get(self) -> None:
        self.require(VIEWER)
        self.render("builtin.html", page=self.api(lambda: views.builtin_page(self.console.redis)))

    def post(self) -> None:
        self.require(ADMIN)
        enable = self.get_argument("enabled") == "1"
        if not enable and self.get_argument("confirm", "") != "yes":
            raise tornado.web.HTTPError(400, reason="disabling the built-in worker needs "
                                        "confirm=yes: read the warning on the page first")
        builtin = self.console.client.builtin
        self.api(builtin.enable if enable else builtin.disable)
        self.audit("builtin.enable" if enable else "builtin.disable", "built-in worker")
        self.redirect("/builtin")


class StepsPage(Base):
    def get(self) -> None:
        self.require(VIEWER)
        pool, state = self.get_argument("pool", ""), self.get_argument("state", "")
        self.render("steps.html", page=self.api(
            lambda: views.steps_page(self.console.redis, pool, state)))


class StepPage(Base):
    def get(self, step_id: str) -> None:
        self.require(VIEWER)
        page = self.api(lambda: views.step_page(self.console.client, step_id))
        if page is None:
            raise tornado.web.HTTPError(404, reason=f"no step with id {step_id!r} (it never "
                                        "existed or its record expired)")
        self.render("step.html", page=page, error="")


class Cancel(Base):
    def post(self, step_id: str) -> None:
        self.require(OPERATOR)
        try:
            before = self.api(lambda: self.console.client.step(step_id).cancel())
        except WorkerPoolError as exc:
            self.audit("step.cancel", step_id, "refused", str(exc))
            raise tornado.web.HTTPError(400, reason=str(exc)) from None
        self.audit("step.cancel", step_id, detail=f"was {before}")
        self.redirect(f"/steps/{quote(step_id)}")


class Artifact(Base):
    def get(self, step_id: str, name: str) -> None:
        self.require(VIEWER)
        data = self.api(lambda: views.artifact(self.console.client, step_id, name))
        if data is None:
            raise tornado.web.HTTPError(404, reason=f"step {step_id} has no artifact {name!r}")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(name)}")
        self.finish(data)


class StepLog(Base):
    """The live log as server-sent events: one blocking read at a time, off the event loop,
    from the last id the browser saw (``Last-Event-ID`` on a reconnect); ``state`` when the
    step's state changes (read once a read returns), ``end`` at the end."""

    async def get(self, step_id: str) -> None:
        self.require(VIEWER)
        if self.api(lambda: views.step_exists(self.console.redis, step_id)) is False:
            raise tornado.web.HTTPError(404, reason=f"no step with id {step_id!r}")
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        after = self.request.headers.get("Last-Event-ID", "0-0")
        store = self.console.client.store
        loop = asyncio.get_running_loop()
        shown = ""  # the state last sent
        while not self.request.connection.stream.closed():  # type: ignore[union-attr]
            read = functools.partial(store.read_log, step_id, after, LOG_BLOCK_MS)
            try:
                rows = await loop.run_in_executor(None, self.console.client.guard, read)
            except Infrastructure as exc:
                self.write(f"event: outage\ndata: {json.dumps(str(exc))}\n\n")
                await self.flush()
                await asyncio.sleep(LOG_BLOCK_MS / 1000)  # Redis is away: try again then
                continue
            ended = False
            for entry_id, entry in rows:
                after = entry_id
                if entry is None:
                    ended = True  # the end marker: the last entry of a log
                    break
                self.write(f"id: {entry_id}\ndata: {json.dumps(views.log_line(entry))}\n\n")
            state = self.api(lambda: views.step_state(self.console.redis, step_id))
            if ended or (not rows and views.has_ended(state)):  # reaped, cancelled while queued
                self.write(f"id: {after}\nevent: end\ndata: {json.dumps(state)}\n\n")
                await self.flush()
                self.finish()
                return
            if state != shown:
                shown = state
                self.write(f"event: state\ndata: {json.dumps(state)}\n\n")
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                return


class DeploymentsPage(Base):
    def get(self) -> None:
        self.require(VIEWER)
        self.render("deployments.html", page=self.api(
            lambda: views.deployments_page(self.console.client)))


class DeploymentPage(Base):
    def get(self, deployment_id: str) -> None:
        self.require(VIEWER)
        try:
            page = self.api(lambda: views.deployment_page(self.console.client, deployment_id))
        except WorkerPoolError as exc:
            raise tornado.web.HTTPError(404, reason=str(exc)) from None
        self.render("deployment.html", page=page)


class RunPage(Base):
    """Run a script: pool, syntax, script, variables, sensitive variables and packages. A
    refused form comes back with what was typed, except the sensitive values."""

    def get(self) -> None:
        self.require(OPERATOR)
        self._form(views.RunForm(), "")

    def _form(self, form: views.RunForm, error: str) -> None:
        self.render("run.html", form=form, error=error,
                    choices=self.api(lambda: views.run_choices(self.console.redis)))

    def post(self) -> None:
        self.require(OPERATOR)
        form = views.RunForm.from_arguments(self.get_argument)
        try:
            step = form.step(self.get_argument("sensitive", ""))
            handle = self.api(lambda: self.console.client.run(step))
        except WorkerPoolError as exc:
            self.audit("step.run", form.pool or "default pool", "refused", str(exc))
            self.set_status(400)
            self._form(form, str(exc))
            return
        self.audit("step.run", handle.id, detail=f"{form.syntax} on {form.pool or 'default pool'}")
        self.redirect(f"/steps/{quote(handle.id)}")


class AuditPage(Base):
    def get(self) -> None:
        self.require(VIEWER)
        entries = self.api(lambda: audit.read(self.console.redis, limit=200))
        self.render("audit.html", entries=entries)


class PoolsApi(Base):
    def get(self) -> None:
        self.require(VIEWER)
        self.finish(self.api(lambda: status_view(read_snapshot(self.console.redis, detail=True))))


class Metrics(Base):
    """Prometheus scrapes without a login, as before the console (no secret is in it)."""

    def get(self) -> None:
        try:
            body = metrics.exposition(self.console.registry)
        except (Infrastructure, redis.RedisError) as exc:
            raise tornado.web.HTTPError(503, reason=str(exc)) from None
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(body)


STEP = r"(?P<step_id>[^/]+)"


def application(console: Console, cookie_secret: str) -> tornado.web.Application:
    here = views.package_dir()
    route = functools.partial(tornado.web.url, kwargs={"console": console})
    return tornado.web.Application(
        [route(r"/", PoolsPage), route(r"/pools", PoolsPage),
         route(r"/pools/(?P<slug>[^/]+)", PoolPage),
         route(r"/pools/(?P<slug>[^/]+)/(?P<action>edit|pause|resume|remove)", PoolPage),
         route(r"/workers/drain", Drain), route(r"/builtin", BuiltinPage),
         route(r"/steps", StepsPage), route(rf"/steps/{STEP}", StepPage),
         route(rf"/steps/{STEP}/log", StepLog), route(rf"/steps/{STEP}/cancel", Cancel),
         route(rf"/steps/{STEP}/artifacts/(?P<name>.+)", Artifact),
         route(r"/deployments", DeploymentsPage),
         route(r"/deployments/(?P<deployment_id>[^/]+)", DeploymentPage),
         route(r"/run", RunPage), route(r"/audit", AuditPage),
         route(r"/login", Login), route(r"/logout", Logout),
         route(r"/api/pools", PoolsApi), route(r"/metrics", Metrics)],
        template_path=str(here / "templates"), static_path=str(here / "static"),
        cookie_secret=cookie_secret, xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict"},
        login_url="/login", default_handler_class=NotFound,
        default_handler_args={"console": console}, compress_response=False,
        log_function=_quiet)


def _quiet(handler: tornado.web.RequestHandler) -> None:
    """No access log: the server's terminal is for workerpool's own messages."""


class NotFound(Base):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, reason=f"nothing at {self.request.path}")
