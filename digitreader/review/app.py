"""The review page: a small Starlette app with server-rendered Jinja2 pages and one vanilla JS file.

Security, since the page changes data:
- Bound to loopback by default; any other address needs a token (`--token` or
  DIGITREADER_REVIEW_TOKEN), and `serve` refuses to start without one. With a token, every page
  and API call needs a logged-in session (the token typed on /login, or `?token=` once in a link),
  or, from a script, `Authorization: Bearer TOKEN` (its POSTs name their reviewer: `X-Reviewer`).
- Loopback binds only answer to loopback host names (no DNS rebinding).
- Every state-changing request (POST) of a browser session must come from this origin (Origin, else
  Referer, must match the Host) and carry the session's CSRF token (form field `csrf_token` or header
  `X-CSRF-Token`), compared in constant time; a bearer request carries no cookie to forge.
  Session cookies are signed, HttpOnly, SameSite=Strict.
- Crops are served from the database by digit id (a PNG rendered from the stored 28x28 bytes);
  no path ever comes from a request. Pages send a strict Content-Security-Policy (no inline script).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from digitreader.db import session_scope
from digitreader.errors import ChangedMeanwhileError, DigitreaderError, NotFoundError, UsageError
from digitreader.review import service
from digitreader.settings import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
QUEUE_PAGE = 200  # items sent to the page at a time
GRID_PAGE = 48
MIN_TOKEN_LENGTH = 8
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def is_loopback(host: str) -> bool:
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


class _Guard:
    """Host check (loopback binds), security headers. Pure ASGI so it also covers static files."""

    def __init__(self, app: ASGIApp, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if name not in LOOPBACK_NAMES:
                await PlainTextResponse("bad Host header", status_code=400)(scope, receive, send)
                return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _header_name(request: Request) -> str:
    """The reviewer a script names (`X-Reviewer`), trimmed; "" when it names none."""
    return request.headers.get("x-reviewer", "").strip()[:128]


class ReviewApp:
    """Holds the configuration; its methods are the routes."""

    def __init__(self, settings: Settings, *, token: str | None, reviewer: str | None) -> None:
        self.settings = settings
        self.token = token
        self.default_reviewer = service.reviewer_name(settings, reviewer)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    # ------------------------------------------------------------------------------- helpers

    def session(self) -> Any:
        return session_scope(self.settings)

    def authed(self, request: Request) -> bool:
        if self.token is None:
            return True
        return request.session.get("auth") is True or self.bearer(request)

    def bearer(self, request: Request) -> bool:
        """A script's request: `Authorization: Bearer TOKEN` with the server's token (only with one)."""
        if self.token is None:
            return False
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), self.token.encode())

    def csrf_token(self, request: Request) -> str:
        tok = request.session.get("csrf")
        if not tok:
            tok = request.session["csrf"] = secrets.token_urlsafe(32)
        return str(tok)

    def same_origin(self, request: Request) -> bool:
        host = request.headers.get("host", "")
        source = request.headers.get("origin") or request.headers.get("referer")
        if not source or source == "null":
            return False
        return urlsplit(source).netloc == host

    async def check_post(self, request: Request, form_token: str | None = None) -> Response | None:
        """None if the POST may proceed, else the error response (403).

        A script with the bearer token needs no origin nor CSRF token (a browser sends no such header
        on its own, so no other site can forge it), but must name its reviewer (`X-Reviewer`), since
        corrections and undo go by that name."""
        if self.bearer(request):
            if not _header_name(request):
                return JSONResponse({"error": "name the reviewer: send an X-Reviewer header with the token"},
                                    status_code=400)  # fmt: skip
            return None
        if not self.same_origin(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        expected = request.session.get("csrf")
        given = request.headers.get("x-csrf-token") or form_token
        if not expected or not given or not hmac.compare_digest(str(expected).encode(), str(given).encode()):
            return JSONResponse({"error": "missing or wrong CSRF token; reload the page"}, status_code=403)
        if not self.authed(request):
            return JSONResponse({"error": "log in first"}, status_code=401)
        return None

    def reviewer(self, request: Request) -> str:
        if self.bearer(request):
            return _header_name(request) or self.default_reviewer
        return str(request.session.get("user") or self.default_reviewer)

    @staticmethod
    def _filters(request: Request) -> dict[str, Any]:
        q = request.query_params
        try:
            batch = int(q["batch"]) if q.get("batch") else None
        except ValueError as exc:
            raise UsageError("batch must be a number") from exc
        order = q.get("order") or "confidence"
        return {"batch_id": batch, "field": q.get("field") or None, "order": order}

    def _queue(self, s: Session, filters: dict[str, Any], limit: int, offset: int = 0) -> dict[str, Any]:
        items = service.list_queue(s, limit=limit, offset=offset, **filters)
        counts = service.queue_counts(s, batch_id=filters["batch_id"], field=filters["field"])
        return {"items": [i.as_dict() for i in items], "counts": counts}

    def login_redirect(self, request: Request) -> Response:
        return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", status_code=303)

    # -------------------------------------------------------------------------------- pages

    async def page(self, request: Request) -> Response:
        return await self._page(request, "review.html", QUEUE_PAGE)

    async def grid(self, request: Request) -> Response:
        return await self._page(request, "grid.html", GRID_PAGE)

    async def _page(self, request: Request, template: str, limit: int) -> Response:
        token = request.query_params.get("token")
        if self.token is not None and token is not None:
            if hmac.compare_digest(token.encode(), self.token.encode()):
                request.session["auth"] = True
                params = {k: v for k, v in request.query_params.items() if k != "token"}
                target = request.url.path + ("?" + urlencode(params) if params else "")
                if not request.session.get("user"):  # the link gives no name: ask it first
                    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
                return RedirectResponse(target, 303)
            return self.login_redirect(request)
        if not self.authed(request):
            return self.login_redirect(request)
        if self.token is not None and request.session.get("auth") is True and not request.session.get("user"):
            return self.login_redirect(request)  # logged in without a name (a `?token=` link): ask it
        filters = self._filters(request)

        def load() -> dict[str, Any]:
            with self.session() as s:
                data = self._queue(s, filters, limit)
                data["batches"] = service.queue_batches(s)
                data["fields"] = service.queue_fields(s, filters["batch_id"])
                return data

        data = await run_in_threadpool(load)
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "csrf": self.csrf_token(request),
                "reviewer": self.reviewer(request),
                "filters": filters,
                "queue": data,
                "limit": limit,
                "mode": "grid" if template == "grid.html" else "single",
            },
        )

    async def login(self, request: Request) -> Response:
        nxt = request.query_params.get("next") or "/"
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        error, status = None, 200
        # With a token, each clerk logs in under a name of their own (none is offered): corrections and
        # `undo` (your latest correction) go by it, and a shared default would mix clerks up. A session
        # that has the token already (a `?token=` link) is only asked the name.
        needs_token = self.token is not None and request.session.get("auth") is not True
        needs_name = self.token is not None
        if request.method == "POST":
            form = await request.form()
            if not self.same_origin(request):
                return PlainTextResponse("cross-origin request refused", status_code=403)
            expected = request.session.get("csrf")
            given = str(form.get("csrf_token") or "")
            name = str(form.get("name") or "").strip()
            if not expected or not hmac.compare_digest(str(expected).encode(), given.encode()):
                error, status = "the form expired; try again", 401
            elif needs_token and not hmac.compare_digest(
                str(form.get("token") or "").encode(), (self.token or "").encode()
            ):
                error, status = "wrong token", 401
                log.warning("review page: wrong token from %s", request.client.host if request.client else "?")
            elif needs_name and not name:
                error, status = "type your name: your corrections are stored under it", 400
            else:
                request.session["auth"] = True
                if name:
                    request.session["user"] = name[:128]
                return RedirectResponse(nxt, status_code=303)
        return self.templates.TemplateResponse(
            request,
            "login.html",
            {"csrf": self.csrf_token(request), "next": nxt, "error": error, "needs_token": needs_token,
             "needs_name": needs_name, "reviewer": "" if needs_name else self.reviewer(request)},
            status_code=status,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------- API

    async def api_queue(self, request: Request) -> Response:
        if not self.authed(request):
            return JSONResponse({"error": "log in first"}, status_code=401)
        filters = self._filters(request)
        try:
            limit = max(1, min(int(request.query_params.get("limit", QUEUE_PAGE)), 1000))
            offset = max(0, int(request.query_params.get("offset", 0)))
        except ValueError:
            return JSONResponse({"error": "limit and offset must be numbers"}, status_code=400)

        def load() -> dict[str, Any]:
            with self.session() as s:
                return self._queue(s, filters, limit, offset)

        return JSONResponse(await run_in_threadpool(load))

    async def api_label(self, request: Request) -> Response:
        denied = await self.check_post(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError as exc:
            return JSONResponse({"error": f"bad request: the body is not JSON ({exc})"}, status_code=400)
        if not isinstance(body, dict) or "digit_id" not in body or "label" not in body:
            return JSONResponse({"error": 'bad request: send {"digit_id": ID, "label": "0"-"9" or "x"}'},
                                status_code=400)  # fmt: skip
        digit_id = service.parse_id(body["digit_id"])
        label = service.parse_label(body["label"])
        # The digit's label as the page showed it (null: blank): refused with 409 when it changed since.
        expected = service.parse_label(body["seen"]) if "seen" in body else service.UNCHECKED
        who = self.reviewer(request)
        filters = self._filters(request)

        def apply() -> dict[str, Any]:
            with self.session() as s:
                res = service.apply_correction(s, digit_id, label, reviewer=who, source="web", expected=expected)
                counts = service.queue_counts(s, batch_id=filters["batch_id"], field=filters["field"])
            return {**res.as_dict(), "counts": counts}

        return JSONResponse(await run_in_threadpool(apply))

    async def api_undo(self, request: Request) -> Response:
        denied = await self.check_post(request)
        if denied is not None:
            return denied
        who = self.reviewer(request)
        filters = self._filters(request)

        def apply() -> dict[str, Any]:
            with self.session() as s:
                res = service.undo(s, reviewer=who)
                counts = service.queue_counts(s, batch_id=filters["batch_id"], field=filters["field"])
            return {**res.as_dict(), "counts": counts}

        return JSONResponse(await run_in_threadpool(apply))

    async def form_label(self, request: Request) -> Response:
        """The no-JavaScript fallback: a plain form post, then back to the queue."""
        form = await request.form()
        denied = await self.check_post(request, str(form.get("csrf_token") or ""))
        if denied is not None:
            return denied
        text = form.get("label")
        if not isinstance(text, str) or not text.strip():
            return PlainTextResponse("bad request: type a digit 0-9, or x for 'not a digit / blank'", status_code=400)
        try:
            digit_id = service.parse_id(form.get("digit_id"))
            label = service.parse_label(text)
            seen = form.get("seen")
            expected = service.parse_label(seen) if isinstance(seen, str) else service.UNCHECKED
        except UsageError as exc:
            return PlainTextResponse(f"bad request: {exc.message}", status_code=400)
        who = self.reviewer(request)

        def apply() -> None:
            with self.session() as s:
                service.apply_correction(s, digit_id, label, reviewer=who, source="web", expected=expected)

        try:
            await run_in_threadpool(apply)
        except ChangedMeanwhileError as exc:
            return PlainTextResponse(f"{exc.message}. Go back and reload the page.", status_code=409)
        return RedirectResponse("/" + (f"?{request.url.query}" if request.url.query else ""), status_code=303)

    async def crop(self, request: Request) -> Response:
        if not self.authed(request):
            return Response(status_code=401)
        digit_id = int(request.path_params["digit_id"])
        try:
            scale = int(request.query_params.get("scale", 8))
        except ValueError:
            scale = 8

        def render() -> bytes:
            with self.session() as s:
                return service.crop_png(s, digit_id, scale)

        return Response(await run_in_threadpool(render), media_type="image/png")

    async def strip(self, request: Request) -> Response:
        if not self.authed(request):
            return Response(status_code=401)
        digit_id = int(request.path_params["digit_id"])

        def render() -> bytes:
            with self.session() as s:
                return service.strip_png(s, digit_id)

        return Response(await run_in_threadpool(render), media_type="image/png")

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")


async def _errors(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotFoundError):
        return JSONResponse({"error": str(exc.message)}, status_code=404)
    if isinstance(exc, ChangedMeanwhileError):  # the page shows it and takes `current`
        body = {"error": str(exc.message), "digit_id": exc.digit_id, "current": exc.current, "by": exc.by}
        return JSONResponse(body, status_code=409)
    if isinstance(exc, UsageError):
        return JSONResponse({"error": str(exc.message)}, status_code=400)
    if isinstance(exc, DigitreaderError):
        return JSONResponse({"error": str(exc.message)}, status_code=500)
    raise exc


def create_app(
    settings: Settings,
    *,
    token: str | None = None,
    reviewer: str | None = None,
    loopback_only: bool = True,
    secret_key: str | None = None,
) -> Starlette:
    """The review page as an ASGI app. `token`: require it (login) for everything."""
    r = ReviewApp(settings, token=token, reviewer=reviewer)
    routes = [
        Route("/", r.page),
        Route("/grid", r.grid),
        Route("/login", r.login, methods=["GET", "POST"]),
        Route("/label", r.form_label, methods=["POST"]),
        Route("/api/queue", r.api_queue),
        Route("/api/label", r.api_label, methods=["POST"]),
        Route("/api/undo", r.api_undo, methods=["POST"]),
        Route("/crop/{digit_id:int}.png", r.crop),
        Route("/strip/{digit_id:int}.png", r.strip),
        Route("/healthz", r.health),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(_Guard, loopback_only=loopback_only),
        Middleware(
            SessionMiddleware,
            secret_key=secret_key or secrets.token_urlsafe(32),
            session_cookie="digitreader_review",
            same_site="strict",
            https_only=False,
            max_age=12 * 3600,
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={DigitreaderError: _errors})
    app.state.review = r
    return app


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve off loopback without a token (raises UsageError)."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(f"the review token must be at least {MIN_TOKEN_LENGTH} characters")
    if not is_loopback(host) and not token:
        raise UsageError(
            f"refusing to serve the review page on {host} without a token",
            hint="pass --token (or set DIGITREADER_REVIEW_TOKEN), or bind to 127.0.0.1",
        )


def serve(
    settings: Settings, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
    reviewer: str | None = None,
) -> None:  # fmt: skip
    """Run the review page with uvicorn until Ctrl-C."""
    import uvicorn

    token = token or settings.review_token
    check_bind(host, token)
    from digitreader.db.session import get_engine

    get_engine(settings)  # fail now (exit 6) if the database is unreachable or its schema is old
    app = create_app(settings, token=token, reviewer=reviewer, loopback_only=is_loopback(host))
    shown = f"[{host}]" if ":" in host else host
    from digitreader.cli.output import err

    err.print(f"review page: http://{shown}:{port}/  (grid: /grid; Ctrl-C stops)"
              + ("; log in with the token" if token else ""))  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
