"""The labeling web app: log-in, compare and ranking views, undo, guidelines, admin. Server-rendered, no inline script.

Security lives in two small ASGI layers so a new route cannot forget it: `Guard` refuses every request without a
signed-in session (the log-in page and /static excepted) and every POST without the session's CSRF token;
`SecurityHeaders` adds the Content-Security-Policy and friends to every response. Model and annotator text only ever
reaches a page through Jinja2's autoescape; the guidelines go through markdown-it with raw HTML off.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
PUBLIC_PATHS = ("/login",)  # and everything under /static/
MAX_FORM_BYTES = 1 << 20  # a judgment with a long edited answer fits many times over
MAX_SECONDS = 24 * 3600.0  # a tab left open overnight is not a measurement


# --- security layers ---------------------------------------------------------------------------------------------

class SecurityHeaders:
    """Adds CSP, nosniff, no-referrer and no-framing to every response; pages (not assets) are never cached."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = list(HEADERS)
                if not scope["path"].startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Guard:
    """No session, no entry (GET goes to the log-in page, anything else is 401); no CSRF token, no POST (403).

    Runs inside SessionMiddleware, so scope["session"] is the signed cookie's content. The POST body is read here to
    check the token and then handed on unchanged to the route.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/static/"):
            return await self.app(scope, receive, send)
        session, method = scope.get("session", {}), scope["method"]
        if scope["path"] not in PUBLIC_PATHS and not session.get("user_id"):
            refusal = (RedirectResponse("/login", status_code=303) if method in ("GET", "HEAD")
                       else PlainTextResponse("sign in first", status_code=401))
            return await refusal(scope, receive, send)
        if method in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        if body is None:
            return await PlainTextResponse("form too large", status_code=413)(scope, receive, send)
        if not csrf_ok(session, body):
            return await PlainTextResponse("missing or wrong CSRF token: reload the page", status_code=403)(
                scope, receive, send)
        await self.app(scope, replay(body, receive), send)


async def read_body(receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_FORM_BYTES:
            return None
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def replay(body: bytes, receive):
    sent = False

    async def again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return again


def csrf_ok(session, body: bytes) -> bool:
    expected = session.get("csrf") or ""
    given = parse_qs(body.decode("ascii", "replace")).get("csrf", [""])[0]
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def login_delay(failed: int) -> float:
    """Seconds to wait before answering a failed log-in: 0.25 s, doubling with each failure in a row, at most 5 s."""
    return min(5.0, 0.25 * 2 ** max(0, failed - 1))


# --- page helpers (pure) -------------------------------------------------------------------------------------------

def prompt_turns(task) -> list[dict]:
    """The prompt as turns to show: the stored conversation, or text read as training reads it (an hh-rlhf
    transcript as its turns, other text one user turn: data/templates.as_conversation)."""
    from ..data.templates import as_conversation

    if task.prompt_messages:
        return [{"role": m.get("role", "user"), "content": m.get("content", "")} for m in task.prompt_messages]
    return as_conversation(task.prompt_text or "")


def markdown_html(text: str) -> str:
    """Guidelines as HTML: raw HTML is shown as text, javascript:/vbscript:/data: links stay unlinked (markdown-it's
    own link check)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).render(text or "")


def judgment_form(form) -> dict:
    """The POST /judge fields as record_judgment's arguments. Empty fields are absent; a textarea's CRLF is LF again."""
    def text(name):
        value = (form.get(name) or "").replace("\r\n", "\n")
        return value if value.strip() else None

    choice = form.get("choice") or ""
    fields = dict(choice=choice, strength=form.get("strength") or None, reason=text("reason"),
                  edited_text=text("edited_text"), seconds=seconds(form.get("seconds")))
    if choice == "rank":
        fields["ranking"] = ranking(form)
    return fields


def seconds(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return min(number, MAX_SECONDS) if math.isfinite(number) and number >= 0 else None


def ranking(form) -> list[int]:
    """`rank_<response id>` = 1..N fields → response ids best first; the store refuses anything not a permutation."""
    ranks = {int(key[5:]): int(value) for key, value in form.items() if key.startswith("rank_")}  # ValueError: 400
    return [response_id for response_id, _ in sorted(ranks.items(), key=lambda item: item[1])]


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "label"


# --- the app -------------------------------------------------------------------------------------------------------

class Views:
    """What every route shares: the project, the templates, who is signed in."""

    def __init__(self, project):
        from .store import get_setting
        from .users import get_annotator

        self.project, self._setting, self._annotator = project, get_setting, get_annotator
        self.templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True))

    def setting(self, key: str) -> str:
        return self._setting(self.project, key, default=None) or ""

    def page(self, request: Request, template: str, status: int = 200, **context):
        session = request.session
        session.setdefault("csrf", secrets.token_urlsafe(32))
        context.update(csrf=session["csrf"], flash=session.pop("flash", None),
                       project_name=self.setting("name") or self.project.folder.name)
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def signed_in(self, request: Request):
        """The annotator of this session (a FastAPI dependency)."""
        user = self._annotator(self.project, request.session.get("user_id"))
        if user is None:  # the account is gone: the old cookie is worth nothing
            request.session.clear()
            raise HTTPException(401, "sign in first")
        return user

    def admin(self, request: Request):
        """The signed-in admin (a dependency on every /admin route); 403 for an annotator."""
        user = self.signed_in(request)
        if not user.is_admin:
            raise HTTPException(403, "admins only")
        return user


def create_app(project) -> FastAPI:
    """The FastAPI app over an open labeling project (`store.open_project`)."""
    app = FastAPI(title="dpokit label", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    views = Views(project)
    add_session_routes(app, views)
    add_labeling_routes(app, views)
    add_admin_routes(app, views)

    @app.exception_handler(StarletteHTTPException)
    async def plain_error(request, exc):
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)

    app.add_middleware(Guard)  # innermost: sees the session the next layer decoded
    app.add_middleware(SessionMiddleware, secret_key=project.secret_key, session_cookie="dpokit_label",
                       max_age=12 * 3600, same_site="lax")  # the cookie is HttpOnly always
    app.add_middleware(SecurityHeaders)  # outermost: every answer carries the headers, refusals included
    return app


def add_session_routes(app: FastAPI, views: Views) -> None:
    """Log-in (slowed after failures, a fresh session on success) and log-out."""
    from .users import check_login, failed_logins

    project = views.project

    @app.get("/login")
    def login_page(request: Request):
        return views.page(request, "login.html")

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        user = await run_in_threadpool(check_login, project, name, password)
        if user is None:
            failed = await run_in_threadpool(failed_logins, project, name)
            await asyncio.sleep(login_delay(failed))  # asleep without holding a worker thread
            return views.page(request, "login.html", status=401, error="Wrong name or password.", name=name)
        request.session.clear()  # a fresh session and token: nothing from before the log-in carries over
        request.session.update(user_id=user.id, csrf=secrets.token_urlsafe(32))
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    def logout(request: Request):
        request.session.clear()
        return RedirectResponse("/login", status_code=303)


def add_labeling_routes(app: FastAPI, views: Views) -> None:
    """The annotator's pages: the next task (compare or rank), judging it, undo, the guidelines."""
    from ..errors import UserError
    from .tasks import next_task, record_judgment, undo_last

    project, signed_in = views.project, Depends(views.signed_in)

    @app.get("/")
    def home(user=signed_in):
        return RedirectResponse("/task", status_code=303)

    @app.get("/task")
    def task_page(request: Request, user=signed_in):
        task = next_task(project, user.id)
        if task is None:
            return views.page(request, "done.html", user=user)
        view = "compare.html" if task.kind == "pair" and len(task.responses) == 2 else "rank.html"
        return views.page(request, view, user=user, task=task, turns=prompt_turns(task))

    @app.post("/judge")
    async def judge(request: Request, user=signed_in):
        form = await request.form()
        try:
            assignment_id, fields = int(form.get("assignment_id", "")), judgment_form(form)
        except ValueError as exc:
            raise HTTPException(400, f"malformed judgment: {exc}")
        try:  # committed before the answer goes out: an acknowledged judgment survives kill -9
            await run_in_threadpool(lambda: record_judgment(project, user.id, assignment_id, **fields))
        except UserError as exc:  # TaskError: not theirs, already judged, bad choice or ranking
            raise HTTPException(409, f"not recorded: {exc}")
        return RedirectResponse("/task", status_code=303)

    @app.post("/undo")
    def undo(request: Request, user=signed_in):
        if undo_last(project, user.id) is None:
            request.session["flash"] = "Nothing to undo."
        return RedirectResponse("/task", status_code=303)

    @app.get("/guidelines")
    def guidelines(request: Request, user=signed_in):
        text = views.setting("guidelines")
        return views.page(request, "guidelines.html", user=user, html=markdown_html(text), empty=not text.strip())


def add_admin_routes(app: FastAPI, views: Views) -> None:
    """Progress and agreement, the guidelines editor, the export download. Each route names the admin dependency
    itself (the tests enumerate /admin routes and check every one refuses an annotator)."""
    from .export import export_rows
    from .stats import admin_summary
    from .store import set_setting

    project, admin = views.project, Depends(views.admin)

    @app.get("/admin")
    def admin_page(request: Request, user=admin):
        return views.page(request, "admin.html", user=user, summary=admin_summary(project),
                          guidelines=views.setting("guidelines"))

    @app.post("/admin/guidelines")
    async def save_guidelines(request: Request, user=admin):
        form = await request.form()
        text = str(form.get("guidelines", "")).replace("\r\n", "\n")
        await run_in_threadpool(set_setting, project, "guidelines", text)
        request.session["flash"] = "Guidelines saved."
        return RedirectResponse("/admin", status_code=303)

    @app.get("/admin/export.jsonl")
    def export(policy: str = "majority", min_annotators: int = 1, user=admin):
        if policy not in ("majority", "unanimous", "all") or min_annotators < 1:
            raise HTTPException(400, "policy is majority, unanimous or all; min_annotators at least 1")
        rows, _counts = export_rows(project, policy=policy, min_annotators=min_annotators)
        name = safe_filename(views.setting("name") or project.folder.name)
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return Response(body, media_type="application/jsonl",
                        headers={"content-disposition": f'attachment; filename="{name}-pairs.jsonl"'})


def serve(config) -> int:
    """`dpokit label serve PROJECT`: open the project and serve it until Ctrl+C."""
    import uvicorn

    from .store import open_project

    project = open_project(config.project, db=config.db)
    try:
        app = create_app(project)
        print(f"dpokit label: serving {project.folder} at http://{config.host}:{config.port}/ (Ctrl+C stops)",
              flush=True)
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    finally:
        project.close()
    return 0
