"""Review: queue, corrections, undo, export, CLI and the web app's security, on a real database filled
by the real pipeline from generated pages whose digits are in a hard style (many get flagged)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from digitreader.cli.main import main
from digitreader.db import Correction, Digit, Document, Field, Page, session_scope
from digitreader.db.session import dispose_engines
from digitreader.errors import ChangedMeanwhileError, ExitCode, NotFoundError, UsageError
from digitreader.export import export_json
from digitreader.review import service
from digitreader.review.app import check_bind, create_app
from digitreader.settings import Settings
from tests.test_db import pg_url  # noqa: F401, F811  (fixture)

T = TypeVar("T")


def present(value: T | None) -> T:
    """`value`, failing the test if it is None (and typed as present)."""
    assert value is not None
    return value


def build_review_db(base: Path, data_dir: Path, pages: int = 2, seed: int = 5) -> tuple[Path, int]:
    """Generate hard-style pages, run the embedded pipeline on them; returns (home, batch id)."""
    from digitreader.pipeline.process import process_batch
    from digitreader.synth import generate
    from training.corrections import HardStyleDigits

    scans = base / "scans"
    generate(scans, pages=pages, seed=seed, kind="form", fmt="png", style="clean",
             digit_source=HardStyleDigits(), data_dir=data_dir)  # fmt: skip
    home = base / "home"
    settings = Settings(home=home, data_dir=data_dir, workers=1, _env_file=None)  # type: ignore[call-arg]
    report = process_batch([scans], settings)
    dispose_engines()  # checkpoint the WAL: the file can be copied
    return home, report.batch_id


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, int]:
    return build_review_db(tmp_path_factory.mktemp("review"), data_dir)


@pytest.fixture()
def rsettings(processed: tuple[Path, int], tmp_path: Path, data_dir: Path) -> Settings:
    """A private copy of the processed database (tests change it)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(processed[0] / "digitreader.sqlite", home / "digitreader.sqlite")
    dispose_engines()
    return Settings(home=home, data_dir=data_dir, reviewer="tester", _env_file=None)  # type: ignore[call-arg]


def test_queue_is_hardest_first_and_filters(rsettings: Settings, processed: tuple[Path, int]) -> None:
    batch = processed[1]
    with session_scope(rsettings) as s:
        items = service.list_queue(s, batch_id=batch)
        assert len(items) >= 10, "hard-style pages should leave many digits flagged"
        confs = [present(i.confidence) for i in items]
        assert confs == sorted(confs)
        by_margin = service.list_queue(s, batch_id=batch, order="margin")
        margins = [present(i.margin) for i in by_margin]
        assert margins == sorted(margins) and {i.digit_id for i in by_margin} == {i.digit_id for i in items}
        field = items[0].field
        only = service.list_queue(s, batch_id=batch, field=field)
        assert only and all(i.field == field for i in only)
        assert len(service.list_queue(s, batch_id=batch, limit=3)) == 3
        assert service.queue_counts(s, batch_id=batch)["left"] == len(items)
        assert all(len(i.top3) == 3 and i.model_version for i in items)
        with pytest.raises(NotFoundError):
            service.list_queue(s, batch_id=batch + 100)
        with pytest.raises(UsageError):
            service.list_queue(s, order="random")


def _flagged_document(s: Any, batch: int) -> int:
    items = service.list_queue(s, batch_id=batch)
    return items[0].document_id


def test_corrections_update_field_document_and_export(rsettings: Settings, processed: tuple[Path, int]) -> None:
    batch = processed[1]
    with session_scope(rsettings) as s:
        doc_id = _flagged_document(s, batch)
        todo = [i for i in service.list_queue(s, batch_id=batch) if i.document_id == doc_id]
        document = s.get(Document, doc_id)
        assert document is not None and document.status == "needs_review"
    for n, item in enumerate(todo):
        if n == 0:  # change the first, accept the rest
            assert item.label is not None
            new: int | None = (item.label + 1) % 10
        else:
            new = item.label
        with session_scope(rsettings) as s:
            res = service.apply_correction(s, item.digit_id, new, reviewer="ana", source="web")
        assert res.accepted == (n != 0)
    assert res.document_status == "done"  # nothing left to review in it
    first = todo[0]
    assert first.label is not None
    with session_scope(rsettings) as s:
        d = s.get(Digit, first.digit_id)
        assert d is not None
        assert d.label == (first.label + 1) % 10 and not d.needs_review
        c = s.scalars(select(Correction).where(Correction.digit_id == first.digit_id)).one()
        assert (c.old_label, c.new_label, c.reviewer, c.source) == (first.label, d.label, "ana", "web")
        assert c.model_version == first.model_version and c.created_at is not None
        f = s.get(Field, first.field_id)
        assert f is not None
        assert f.value == "".join(str(x.label) for x in f.digits if not x.blank)
        assert str(d.label) in f.value and not f.needs_review
        document = s.get(Document, doc_id)
        assert document is not None and document.status == "done"
        out = export_json(s, batch)
    doc = next(x for x in out["documents"] if x["status"] == "done" and any(
        dd.get("corrected") for p in x["pages"] for ff in p["fields"] for dd in ff["digits"]))  # fmt: skip
    digits = [dd for p in doc["pages"] for ff in p["fields"] for dd in ff["digits"]]
    corrected = [dd for dd in digits if dd.get("reviewed")]
    assert len(corrected) == len(todo)
    assert all(dd["needs_review"] is False for dd in corrected)
    fields = [ff for p in doc["pages"] for ff in p["fields"] if any(dd.get("reviewed") for dd in ff["digits"])]
    assert fields and all(ff["reviewed"] for ff in fields)


def test_x_blank_and_undo_restore_everything(rsettings: Settings, processed: tuple[Path, int]) -> None:
    batch = processed[1]
    with session_scope(rsettings) as s:
        item = service.list_queue(s, batch_id=batch)[0]
        f = s.get(Field, item.field_id)
        assert f is not None
        before = (f.value, f.needs_review, list(f.flags), present(s.get(Document, item.document_id)).status)
    with session_scope(rsettings) as s:
        service.apply_correction(s, item.digit_id, None, reviewer="tester")
    with session_scope(rsettings) as s:
        d = s.get(Digit, item.digit_id)
        assert d is not None
        assert d.blank and d.label is None and not d.needs_review and d.crop is not None
        assert len(present(s.get(Field, item.field_id)).value) == len(before[0]) - 1
        assert service.queue_counts(s, batch_id=batch)["left"] == len(service.list_queue(s, batch_id=batch))
    with session_scope(rsettings) as s:
        res = service.undo(s, reviewer="tester")
        assert res.digit_id == item.digit_id
    with session_scope(rsettings) as s:
        d = s.get(Digit, item.digit_id)
        f = s.get(Field, item.field_id)
        assert d is not None and f is not None
        assert (d.label, d.blank, d.needs_review) == (item.label, False, True)
        assert (f.value, f.needs_review, list(f.flags), present(s.get(Document, item.document_id)).status) == before
        assert not s.scalars(select(Correction)).all()
        with pytest.raises(NotFoundError):
            service.undo(s, reviewer="tester")
        with pytest.raises(NotFoundError):
            service.apply_correction(s, 10**9, 1, reviewer="tester")
    assert service.parse_label("x") is None and service.parse_label("7") == 7
    with pytest.raises(UsageError):
        service.parse_label("12")


def test_crop_and_strip_png(rsettings: Settings, processed: tuple[Path, int]) -> None:
    with session_scope(rsettings) as s:
        item = service.list_queue(s, batch_id=processed[1])[0]
        png = service.crop_png(s, item.digit_id, 8)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and service.png_size(png) == (224, 224)
        strip = service.strip_png(s, item.digit_id)
        f = s.get(Field, item.field_id)
        assert f is not None
        assert f.strip is not None  # the field's strip of the page (tests/test_review_strips.py)
        stored = cv2.imdecode(np.frombuffer(f.strip, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert stored is not None
        assert service.png_size(strip) == (stored.shape[1], stored.shape[0])


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_list_label_undo(rsettings: Settings, processed: tuple[Path, int], monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from digitreader.settings import get_settings

    monkeypatch.setenv("DIGITREADER_HOME", str(rsettings.home))
    monkeypatch.setenv("DIGITREADER_REVIEWER", "cli-user")
    monkeypatch.delenv("DIGITREADER_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        code, out, err = _cli(["review", "list", "--batch", str(processed[1]), "--json"], capsys)
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        assert rows and "digit(s) left to review" in err
        first = rows[0]
        code, out, err = _cli(["review", "label", str(first["digit_id"]), "x", "--json"], capsys)
        assert code == 0, err
        res = json.loads(out)
        assert res["new_label"] is None and res["reviewer"] == "cli-user"
        code, out, _ = _cli(["review", "list", "--batch", str(processed[1])], capsys)
        listed = [line.split("\t", 1)[0] for line in out.splitlines()]  # first column: the digit id
        assert str(first["digit_id"]) not in listed and len(listed) == len(rows) - 1
        assert _cli(["review", "label", str(first["digit_id"]), "12"], capsys)[0] == ExitCode.USAGE
        assert _cli(["review", "label", "999999999", "1"], capsys)[0] == ExitCode.NOT_FOUND
        code, _, err = _cli(["review", "undo"], capsys)
        assert code == 0 and f"digit {first['digit_id']}" in err
        assert _cli(["review", "undo"], capsys)[0] == ExitCode.NOT_FOUND
        assert _cli(["review", "--host", "0.0.0.0"], capsys)[0] == ExitCode.USAGE  # no token off loopback
    finally:
        get_settings.cache_clear()


# ----------------------------------------------------------------------------------------- web


def _two_reviewers_in_one_field(settings: Settings, batch: int) -> None:
    """Two reviewers correct two digits of one field at the same moment: the second correction waits
    for the first (`service._hold_document`), and the field's value holds both. Without the wait, on
    PostgreSQL the second re-derived the value from the digits as they were before the first's commit
    and wrote it over the first's: the digits said one thing, the field's value another ("309" for
    digits 4, 0, 9). On SQLite the second correction's first write happened to come before its reads."""
    with session_scope(settings) as s:
        pairs: list[tuple[int, int]] = []  # (digit id, label) of the first field with two digits read
        for f in s.scalars(select(Field).join(Page).join(Document).where(Document.batch_id == batch)):
            pairs = [(d.id, d.label) for d in f.digits if d.crop is not None and d.label is not None]
            if len(pairs) >= 2:
                field_id = f.id
                break
    (d1, old1), (d2, old2) = pairs[:2]
    new1, new2 = (old1 + 1) % 10, (old2 + 1) % 10
    first_applied, errors = threading.Event(), []

    def second() -> None:
        first_applied.wait(timeout=60)
        try:
            with session_scope(settings) as s:
                service.apply_correction(s, d2, new2, reviewer="b", source="web")
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    other = threading.Thread(target=second)
    other.start()
    with session_scope(settings) as s:
        service.apply_correction(s, d1, new1, reviewer="a", source="web")
        first_applied.set()
        time.sleep(0.5)  # the second correction starts before this one commits
    other.join(timeout=120)
    assert errors == []
    with session_scope(settings) as s:
        f = present(s.get(Field, field_id))
        labels = {d.id: d.label for d in f.digits}
        assert (labels[d1], labels[d2]) == (new1, new2)
        assert f.value == "".join(str(d.label) for d in f.digits if not d.blank and d.label is not None)


def test_two_reviewers_in_one_field_at_once(rsettings: Settings, processed: tuple[Path, int]) -> None:
    _two_reviewers_in_one_field(rsettings, processed[1])


def _client(settings: Settings, **kw: Any) -> TestClient:
    return TestClient(create_app(settings, **kw), base_url="http://127.0.0.1:8765")


def _csrf(html: str) -> str:
    marker = 'name="csrf-token" content="'
    return html.split(marker, 1)[1].split('"', 1)[0]


def test_web_csrf_origin_and_host_checks(rsettings: Settings, processed: tuple[Path, int]) -> None:
    c = _client(rsettings)
    page = c.get(f"/?batch={processed[1]}")
    assert page.status_code == 200 and "digits left to review" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    token = _csrf(page.text)
    data = json.loads(page.text.split('id="queue-data">', 1)[1].split("</script>", 1)[0])
    item = data["items"][0]
    origin = {"Origin": "http://127.0.0.1:8765"}
    body = {"digit_id": item["digit_id"], "label": "4"}
    assert c.post("/api/label", json=body, headers=origin).status_code == 403  # no CSRF token
    assert c.post("/api/label", json=body, headers={**origin, "X-CSRF-Token": "wrong"}).status_code == 403
    evil = {"Origin": "http://evil.example", "X-CSRF-Token": token}
    assert c.post("/api/label", json=body, headers=evil).status_code == 403
    assert c.post("/api/label", json=body, headers={"X-CSRF-Token": token}).status_code == 403  # no Origin
    with session_scope(rsettings) as s:
        assert not s.scalars(select(Correction)).all()
    ok = c.post("/api/label", json=body, headers={**origin, "X-CSRF-Token": token})
    assert ok.status_code == 200, ok.text
    assert ok.json()["new_label"] == 4 and ok.json()["counts"]["left"] == data["counts"]["left"] - 1
    with session_scope(rsettings) as s:
        assert present(s.get(Digit, item["digit_id"])).label == 4
        assert s.scalars(select(Correction)).one().source == "web"
    undo = c.post("/api/undo", headers={**origin, "X-CSRF-Token": token})
    assert undo.status_code == 200 and undo.json()["digit_id"] == item["digit_id"]
    # The no-JavaScript form checks the same token (form field) and origin.
    form = {"digit_id": str(item["digit_id"]), "label": "x", "csrf_token": token}
    assert c.post("/label", data=form, headers={"Origin": "http://evil.example"}).status_code == 403
    r = c.post("/label", data=form, headers=origin, follow_redirects=False)
    assert r.status_code == 303
    # Crops by id only; unknown ids 404; paths never reach the filesystem.
    png = c.get(f"/crop/{item['digit_id']}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert c.get("/crop/999999999.png").status_code == 404
    assert c.get("/crop/..%2f..%2fetc%2fpasswd.png").status_code == 404
    assert c.get(f"/strip/{item['digit_id']}.png").status_code == 200
    # DNS rebinding: a loopback server only answers to loopback host names.
    assert c.get("/", headers={"Host": "attacker.example:8765"}).status_code == 400
    assert c.get("/grid").status_code == 200


def test_web_token_required_off_loopback(rsettings: Settings) -> None:
    with pytest.raises(UsageError):
        check_bind("0.0.0.0", None)
    with pytest.raises(UsageError):
        check_bind("192.168.1.5", "short")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "a-long-enough-token")
    c = TestClient(create_app(rsettings, token="a-long-enough-token", loopback_only=False),
                   base_url="http://review.example")  # fmt: skip
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert c.get("/api/queue").status_code == 401
    assert c.get("/crop/1.png").status_code == 401
    login = c.get("/login")
    token = _csrf(login.text)
    bad = c.post("/login", data={"csrf_token": token, "token": "nope", "name": "eve"},
                 headers={"Origin": "http://review.example"})  # fmt: skip
    assert bad.status_code == 401 and "wrong token" in bad.text
    good = c.post("/login", data={"csrf_token": token, "token": "a-long-enough-token", "name": "bob"},
                  headers={"Origin": "http://review.example"}, follow_redirects=False)  # fmt: skip
    assert good.status_code == 303
    page = c.get("/")
    assert page.status_code == 200 and "reviewer: bob" in page.text
    assert c.get("/api/queue").status_code == 200
    # A link with ?token= logs in once and drops the token from the address.
    c2 = TestClient(create_app(rsettings, token="a-long-enough-token", loopback_only=False),
                    base_url="http://review.example")  # fmt: skip
    r = c2.get("/?token=a-long-enough-token", follow_redirects=False)
    assert r.status_code == 303 and "token" not in r.headers["location"]
    assert c2.get("/", follow_redirects=False).headers["location"].startswith("/login")  # the name first


def _login(c: TestClient, origin: str, name: str, token: str | None = None) -> dict[str, str]:
    """Log in through the form; returns the headers a POST of this session needs."""
    csrf = _csrf(c.get("/login").text)
    form = {"csrf_token": csrf, "name": name, **({"token": token} if token else {})}
    r = c.post("/login", data=form, headers={"Origin": origin}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return {"Origin": origin, "X-CSRF-Token": csrf}


def test_login_with_a_token_asks_each_clerk_for_a_name(rsettings: Settings) -> None:
    """With a token, the login form offers no name (before: the server's default reviewer, pre-filled, so
    clerks who kept it shared one identity and undid each other's corrections) and refuses an empty one;
    a `?token=` link asks the name before the page. Loopback without a token keeps the default."""
    origin, token = "http://review.example", "a-long-enough-token"
    app = create_app(rsettings, token=token, loopback_only=False, secret_key="k")
    c = TestClient(app, base_url=origin)
    form = c.get("/login").text
    assert '<input name="name" value=""' in form and "required" in form.split('name="name"', 1)[1].split(">", 1)[0]
    assert 'value="tester"' not in form
    csrf = _csrf(form)
    r = c.post("/login", data={"csrf_token": csrf, "token": token, "name": "  "}, headers={"Origin": origin})
    assert r.status_code == 400 and "type your name" in r.text
    assert c.get("/", follow_redirects=False).status_code == 303  # not logged in
    # Two clerks, each under their own name: `u` takes back one's own correction only.
    ana, bob = TestClient(app, base_url=origin), TestClient(app, base_url=origin)
    ha, hb = _login(ana, origin, "ana", token), _login(bob, origin, "bob", token)
    items = ana.get("/api/queue").json()["items"]
    assert (
        ana.post("/api/label", json={"digit_id": items[0]["digit_id"], "label": "1"}, headers=ha).json()["reviewer"]
        == "ana"
    )
    assert (
        bob.post("/api/label", json={"digit_id": items[1]["digit_id"], "label": "2"}, headers=hb).json()["reviewer"]
        == "bob"
    )
    assert ana.post("/api/undo", headers=ha).json()["digit_id"] == items[0]["digit_id"]
    # A link with the token logs in, then asks the name (no token field) before any page.
    link = TestClient(app, base_url=origin)
    r = link.get(f"/grid?batch=1&token={token}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?") and token not in r.headers["location"]
    assert link.get("/", follow_redirects=False).headers["location"].startswith("/login")
    form = link.get("/login").text
    assert 'name="token"' not in form and '<input name="name" value=""' in form
    r = link.post("/login?next=/grid", data={"csrf_token": _csrf(form), "name": "carol"}, headers={"Origin": origin},
                  follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/grid"
    assert "reviewer: carol" in link.get("/").text
    # Loopback without a token: no login needed, the form offers the default name as before.
    assert '<input name="name" value="tester">' in _client(rsettings).get("/login").text


def test_a_script_with_the_bearer_token_labels_under_the_name_it_gives(rsettings: Settings) -> None:
    """A script sends the token as `Authorization: Bearer` instead of logging in: it reads the queue and
    labels, with no cookie, origin or CSRF token (nothing a browser could forge), and must name its
    reviewer (`X-Reviewer`): corrections and undo go by it. Before, such a POST was refused as
    cross-origin, and the name would have been the server's default reviewer."""
    token = "a-long-enough-token"
    app = create_app(rsettings, token=token, loopback_only=False, secret_key="k")
    script = TestClient(app, base_url="http://review.example")
    auth = {"Authorization": f"Bearer {token}"}
    assert script.get("/api/queue").status_code == 401
    assert script.get("/api/queue", headers={"Authorization": "Bearer wrong-token-here"}).status_code == 401
    items = script.get("/api/queue", headers=auth).json()["items"]
    assert len(items) >= 2
    first, second = items[0], items[1]
    body = {"digit_id": first["digit_id"], "label": "7", "seen": "x" if first["label"] is None else str(first["label"])}
    nameless = script.post("/api/label", json=body, headers=auth)
    assert nameless.status_code == 400 and "X-Reviewer" in nameless.json()["error"]
    forged = script.post("/api/label", json=body, headers={"Authorization": "Bearer nope", "X-Reviewer": "eve"})
    assert forged.status_code == 403  # no token, no session: the browser checks apply, and fail
    ok = script.post("/api/label", json=body, headers={**auth, "X-Reviewer": " ana "})
    assert ok.status_code == 200 and ok.json()["reviewer"] == "ana" and ok.json()["new_label"] == 7
    body2 = {"digit_id": second["digit_id"], "label": "x"}
    assert script.post("/api/label", json=body2, headers={**auth, "X-Reviewer": "bob"}).json()["reviewer"] == "bob"
    with session_scope(rsettings) as s:
        who = {c.digit_id: c.reviewer for c in s.scalars(select(Correction))}
    assert who[first["digit_id"]] == "ana" and who[second["digit_id"]] == "bob"
    # ana's undo takes back ana's correction, not bob's later one
    undone = script.post("/api/undo", headers={**auth, "X-Reviewer": "ana"})
    assert undone.status_code == 200 and undone.json()["digit_id"] == first["digit_id"]
    assert script.post("/api/undo", headers={**auth, "X-Reviewer": "ana"}).status_code == 404


def test_the_queue_of_a_batch_no_batch_can_be_is_not_found(rsettings: Settings) -> None:
    """A batch id beyond the id column (an OverflowError from SQLite before: a 500) is "not found"."""
    c = _client(rsettings)
    for batch in ("99999999999999999999999", str(2**63), "0"):
        r = c.get(f"/api/queue?batch={batch}")
        assert r.status_code == 404 and "does not exist" in r.json()["error"], batch


def test_web_refuses_malformed_labels_and_ids(
    rsettings: Settings, processed: tuple[Path, int], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """JSON true/false, "10", a missing form label, a digit id true or 44.9 are refused with 400 (before:
    'True847' in the field's value, "10" and a missing form label meant blank, true meant digit 1, 44.9
    digit 44); an id no row can have is 404 (before: a 500)."""
    c = _client(rsettings)
    page = c.get(f"/?batch={processed[1]}")
    h = {"Origin": "http://127.0.0.1:8765", "X-CSRF-Token": _csrf(page.text)}
    item = json.loads(page.text.split('id="queue-data">', 1)[1].split("</script>", 1)[0])["items"][0]
    did = item["digit_id"]
    for body, status, said in [
        ({"digit_id": did, "label": True}, 400, "label true is not a digit"),
        ({"digit_id": did, "label": False}, 400, "label false is not a digit"),
        ({"digit_id": did, "label": "10"}, 400, "label '10'"),
        ({"digit_id": did, "label": 10}, 400, "label 10 is not a digit"),
        ({"digit_id": did, "label": 7.0}, 400, "label 7.0"),
        ({"digit_id": did, "label": ""}, 400, "label ''"),
        ({"digit_id": True, "label": "3"}, 400, "digit_id true is not a whole number"),
        ({"digit_id": did + 0.9, "label": "3"}, 400, f"digit_id {did + 0.9} is not a whole number"),
        ({"digit_id": 2**70, "label": "3"}, 404, f"digit {2**70} does not exist"),
        ({"digit_id": did, "label": "3", "seen": True}, 400, "label true is not a digit"),
        ({"label": "3"}, 400, "bad request"),
        ([1, 2], 400, "bad request"),
    ]:
        r = c.post("/api/label", json=body, headers=h)
        assert (r.status_code, said in r.json()["error"]) == (status, True), (body, r.text)
    r = c.post("/label", data={"digit_id": str(did), "csrf_token": h["X-CSRF-Token"]},
               headers={"Origin": h["Origin"]}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 400 and "type a digit 0-9" in r.text
    r = c.post("/label", data={"digit_id": "1.5", "label": "3", "csrf_token": h["X-CSRF-Token"]},
               headers={"Origin": h["Origin"]}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 400
    assert c.get(f"/crop/{2**70}.png").status_code == 404 and c.get(f"/strip/{2**70}.png").status_code == 404
    with session_scope(rsettings) as s:
        assert not s.scalars(select(Correction)).all()
        d = present(s.get(Digit, did))
        assert (d.label, d.blank) == (item["label"], False)
        with pytest.raises(NotFoundError):
            service.undo(s, correction_id=2**70)
    with pytest.raises(UsageError):
        service.parse_label(True)
    with pytest.raises(UsageError):
        service.parse_label("10")
    # The CLI: 10 is refused (before: blank), an id too big for the database is "not found" (before: a crash).
    from digitreader.settings import get_settings

    monkeypatch.setenv("DIGITREADER_HOME", str(rsettings.home))
    monkeypatch.delenv("DIGITREADER_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        code, _, err = _cli(["review", "label", str(did), "10"], capsys)
        assert code == ExitCode.USAGE and "label '10'" in err
        assert _cli(["review", "label", str(2**70), "1"], capsys)[0] == ExitCode.NOT_FOUND
        assert _cli(["review", "show", str(2**70)], capsys)[0] == ExitCode.NOT_FOUND
    finally:
        get_settings.cache_clear()


def test_a_label_for_a_digit_changed_since_it_was_seen_is_refused(
    rsettings: Settings, processed: tuple[Path, int]
) -> None:
    """A page loaded before another reviewer's correction sends the label it showed (`seen`): the server
    refuses the overwrite (409, naming who changed it, with the current label) instead of replacing their
    correction with the model's label. Without `seen` (the CLI) nothing is checked."""
    origin = "http://127.0.0.1:8765"
    app = create_app(rsettings, secret_key="k")
    alice, bob = TestClient(app, base_url=origin), TestClient(app, base_url=origin)  # one server, two sessions
    ha, hb = _login(alice, origin, "alice"), _login(bob, origin, "bob")
    items = alice.get(f"/api/queue?batch={processed[1]}").json()["items"]
    item = next(i for i in items if not i["non_digit"])
    did, model = item["digit_id"], item["label"]
    fix = (model + 1) % 10
    assert (
        bob.post("/api/label", json={"digit_id": did, "label": str(fix), "seen": model}, headers=hb).status_code == 200
    )
    r = alice.post("/api/label", json={"digit_id": did, "label": str(model), "seen": model}, headers=ha)
    assert r.status_code == 409
    assert r.json()["current"] == fix and r.json()["by"] == "bob" and "bob changed it" in r.json()["error"]
    form = {"digit_id": str(did), "label": str(model), "seen": str(model), "csrf_token": ha["X-CSRF-Token"]}
    r = alice.post("/label", data=form, headers={"Origin": origin}, follow_redirects=False)  # the no-JS form
    assert r.status_code == 409 and "bob changed it" in r.text
    with session_scope(rsettings) as s:
        d = present(s.get(Digit, did))
        assert d.label == fix and [c.reviewer for c in d.corrections] == ["bob"]
    # Seen as it is now: stored.
    r = alice.post("/api/label", json={"digit_id": did, "label": "x", "seen": fix}, headers=ha)
    assert r.status_code == 200 and r.json()["old_label"] == fix
    # Undone meanwhile: what alice saw (blank) is gone again.
    assert alice.post("/api/undo", headers=ha).json()["digit_id"] == did
    r = bob.post("/api/label", json={"digit_id": did, "label": "5", "seen": None}, headers=hb)
    assert r.status_code == 409 and r.json()["current"] == fix
    with session_scope(rsettings) as s:
        with pytest.raises(ChangedMeanwhileError, match="alice changed it|bob changed it"):
            service.apply_correction(s, did, 3, reviewer="carol", expected=model)
        assert service.apply_correction(s, did, 3, reviewer="carol").old_label == fix  # unchecked (the CLI)


def test_undo_takes_back_your_latest_correction_still_standing(
    rsettings: Settings, processed: tuple[Path, int]
) -> None:
    """Alice labels two digits, then Bob labels Alice's second one again: her `u` takes back her first
    (the second is history under Bob's). Before, it picked the second and refused ("undo correction N
    first", Bob's), so Alice could undo nothing until she made a new correction."""
    with session_scope(rsettings) as s:
        first, second = service.list_queue(s, batch_id=processed[1])[:2]
        mine = service.apply_correction(s, first.digit_id, 3, reviewer="alice")
        service.apply_correction(s, second.digit_id, 4, reviewer="alice")
        service.apply_correction(s, second.digit_id, 5, reviewer="bob")
    with session_scope(rsettings) as s:
        back = service.undo(s, reviewer="alice")
        assert (back.correction_id, back.digit_id, back.label) == (mine.correction_id, first.digit_id, first.label)
        assert present(s.get(Digit, second.digit_id)).label == 5  # Bob's stands
    with session_scope(rsettings) as s, pytest.raises(NotFoundError, match="nothing to undo for alice"):
        service.undo(s, reviewer="alice")


def test_two_undos_of_one_correction_at_once(rsettings: Settings, processed: tuple[Path, int]) -> None:
    """Two tabs (or two `review undo --any`) undo the same correction at once: the second reads it before
    the first's commit, waits for the document's lock, then finds it gone: "nothing to undo" (404 on the
    page), not a crash (before: `max() arg is an empty sequence`, a 500)."""
    with session_scope(rsettings) as s:
        it = service.list_queue(s, batch_id=processed[1])[0]
        service.apply_correction(s, it.digit_id, (present(it.label) + 1) % 10, reviewer="ana", source="web")
    errors: list[Exception] = []
    first_in = threading.Event()

    def second() -> None:
        first_in.wait(timeout=60)
        try:
            with session_scope(rsettings) as s:
                service.undo(s, reviewer="ana")
        except Exception as exc:  # checked below
            errors.append(exc)

    other = threading.Thread(target=second)
    other.start()
    with session_scope(rsettings) as s:
        res = service.undo(s, reviewer="ana")
        first_in.set()
        time.sleep(0.5)  # the second undo reads the correction, then waits for this one's commit
    other.join(timeout=120)
    assert res.digit_id == it.digit_id
    assert len(errors) == 1 and isinstance(errors[0], NotFoundError), errors
    assert "nothing to undo" in errors[0].message
    with session_scope(rsettings) as s:
        d = present(s.get(Digit, it.digit_id))
        assert (d.label, d.needs_review, d.corrections) == (it.label, True, [])


@pytest.mark.integration
def test_review_on_postgresql(pg_url: str, tmp_path: Path, data_dir: Path) -> None:  # noqa: F811
    """The same corrections on PostgreSQL (row locks, JSON columns), read back by retraining."""
    from digitreader import registry
    from digitreader.db.migrate import upgrade
    from digitreader.db.session import get_engine
    from digitreader.pipeline.process import process_batch
    from digitreader.synth import generate
    from training.corrections import HardStyleDigits

    settings = Settings(home=tmp_path / "home", database_url=pg_url, data_dir=data_dir, workers=1,
                        _env_file=None)  # type: ignore[call-arg]  # fmt: skip
    upgrade(get_engine(settings, check_schema=False))
    scans = generate(tmp_path / "scans", pages=1, seed=9, kind="form", style="clean",
                     digit_source=HardStyleDigits(), data_dir=data_dir)  # fmt: skip
    batch = process_batch(scans, settings).batch_id
    with session_scope(settings) as s:
        items = service.list_queue(s, batch_id=batch)
        assert items
        for it in items[:5]:
            service.apply_correction(s, it.digit_id, 3, reviewer="pg", source="cli")
    with session_scope(settings) as s:
        corrected = registry.corrected_digits(s)
        assert len(corrected) == len({bytes(present(present(s.get(Digit, it.digit_id)).crop)) for it in items[:5]})
        assert set(corrected.labels.tolist()) == {3}
        service.undo(s, reviewer="pg")
        assert service.queue_counts(s, batch_id=batch)["left"] == len(items) - 4
    _two_reviewers_in_one_field(settings, batch)


def test_a_damaged_scans_digits_say_so_on_the_review_page(
    rsettings: Settings, processed: tuple[Path, int], tmp_path: Path
) -> None:
    """A flagged digit of a scan read from damaged image data comes to the reviewer with the decoder's
    warning (the queue, the page, the digit's context): the field may lack what the lost part held."""
    from digitreader.pipeline.process import process_batch
    from tests.test_decoder_messages import LIBJPEG, damaged_jpeg

    rep = process_batch([damaged_jpeg(tmp_path / "damaged.jpg")], rsettings)
    said = f"page 1: {LIBJPEG}"
    with session_scope(rsettings) as s:
        items = service.list_queue(s, batch_id=rep.batch_id)
        whole = service.list_queue(s, batch_id=processed[1])
        context = service.digit_context(s, items[0].digit_id)
    assert items and all(i.warnings == (said,) for i in items)
    assert whole and all(i.warnings == () for i in whole)
    assert context["document"]["warnings"] == [said]
    c = _client(rsettings)
    page = c.get(f"/?batch={rep.batch_id}").text
    data = json.loads(page.split('id="queue-data">', 1)[1].split("</script>", 1)[0])
    assert data["items"][0]["warnings"] == [said]
    assert f'<p class="damaged" id="damaged" >damaged scan, read as far as it decodes: {said}.' in page
    assert f'<p class="why" id="why">why here: {items[0].why}</p>' in page and items[0].why
    assert '<p class="damaged" id="damaged" hidden>' in c.get(f"/?batch={processed[1]}").text


def test_a_damaged_scan_needs_each_digit_seen_once_and_keeps_its_flag(rsettings: Settings, tmp_path: Path) -> None:
    """A scan read from damaged image data waits for review even where every digit reads surely: each
    field it read a digit in comes through the queue one digit at a time until a reviewer has seen
    them all; then the document is done and `damaged_image` stays in the fields' flags as a record."""
    from digitreader.pipeline.process import process_batch
    from tests.test_decoder_messages import damaged_jpeg

    rep = process_batch([damaged_jpeg(tmp_path / "damaged.jpg")], rsettings)
    with session_scope(rsettings) as s:
        doc = s.scalars(select(Document).where(Document.batch_id == rep.batch_id)).one()
        fields = [f for p in doc.pages for f in p.fields]
        flagged = [f for f in fields if "damaged_image" in f.flags]
        assert doc.status == "needs_review" and flagged and all(f.needs_review for f in flagged)
        to_see = sum(1 for f in flagged for d in f.digits if not d.blank)
        doc_id = doc.id
    seen = 0
    while True:
        with session_scope(rsettings) as s:
            items = service.list_queue(s, batch_id=rep.batch_id)
            if not items:
                break
            it = items[0]
            if not s.get(Digit, it.digit_id).needs_review:  # type: ignore[union-attr]
                assert it.why.startswith("its page was read from damaged image data"), it.why
            res = service.apply_correction(s, it.digit_id, it.label, reviewer="clerk", source="cli")
            seen += 1
            assert seen <= to_see + 5, "the queue does not empty"
    with session_scope(rsettings) as s:
        back = present(s.get(Document, doc_id))
        assert back.status == "done" and res.document_status == "done"
        fields = [f for p in back.pages for f in p.fields]
        assert [f.id for f in fields if "damaged_image" in f.flags] == [f.id for f in flagged]
        assert not any(f.needs_review for f in fields)
        assert all(d.corrections for f in fields if "damaged_image" in f.flags for d in f.digits if not d.blank)
    assert seen == to_see  # each digit of the flagged fields once, none of another field
