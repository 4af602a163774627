"""The review page in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium) against
a real server (uvicorn in a thread) on a database the pipeline filled; the test checks the database.

Chromium comes from apt (`.ci/run` installs it when missing); Playwright's own browsers are never
downloaded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from digitreader.db import Correction, Digit, session_scope
from digitreader.db.session import dispose_engines
from digitreader.review import service
from digitreader.review.app import create_app
from digitreader.settings import Settings
from tests.test_review import build_review_db, present

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[str, Settings, int]]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (CI installs it: apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright")
    import uvicorn

    base = tmp_path_factory.mktemp("browser")
    home, batch = build_review_db(base, data_dir, pages=1, seed=8)
    settings = Settings(home=home, data_dir=data_dir, reviewer="browser-user", _env_file=None)  # type: ignore[call-arg]
    port = _free_port()
    app = create_app(settings)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("review server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", settings, batch
    finally:
        srv.should_exit = True
        t.join(timeout=10)
        dispose_engines()


@pytest.fixture()
def page(server: Any) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page()
            yield pg
        finally:
            browser.close()


def _current(pg: Any) -> int:
    return int(pg.get_attribute("#review", "data-digit"))


def _until(check: Any, timeout: float = 10.0) -> None:
    """Poll from Python (the page's CSP forbids the eval that page.wait_for_function uses)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the page did not get there in time")
        time.sleep(0.05)


def _wait_moved(pg: Any, old: int) -> int:
    _until(lambda: _current(pg) != old)
    return _current(pg)


def _left(pg: Any) -> int:
    return int(pg.inner_text("#left"))


def test_keyboard_labelling_updates_database(server: Any, page: Any) -> None:
    url, settings, batch = server
    with session_scope(settings) as s:
        queue = service.list_queue(s, batch_id=batch)
    assert len(queue) >= 5
    page.goto(f"{url}/?batch={batch}")
    page.wait_for_selector("#review[data-ready='1']")
    left0 = int(page.inner_text("#left"))
    assert left0 == len(queue)
    assert page.locator("#top3 li").count() == 3

    first = _current(page)
    assert first == queue[0].digit_id  # hardest first
    page.keyboard.press("7")  # a digit key labels and moves on
    second = _wait_moved(page, first)
    # Drawn by the page's script for the item it moved to: why that digit is in the queue.
    assert page.inner_text("#why") == "why here: " + next(q.why for q in queue if q.digit_id == second)
    page.keyboard.press("Enter")  # accept the model's label
    third = _wait_moved(page, second)
    page.keyboard.press("x")  # not a digit / blank
    fourth = _wait_moved(page, third)
    _until(lambda: _left(page) == left0 - 3)
    page.keyboard.press("u")  # undo the x
    _until(lambda: _current(page) == third and _left(page) == left0 - 2)
    page.keyboard.press("ArrowRight")  # skip it
    assert _wait_moved(page, third) == fourth
    page.keyboard.press("ArrowLeft")
    assert _wait_moved(page, fourth) == third

    with session_scope(settings) as s:
        d1, d2, d3 = (present(s.get(Digit, i)) for i in (first, second, third))
        # Enter accepts the model's answer as the page shows it: this item the model takes for no
        # digit (top-1 "x"), so Enter stores x, not its best digit (before: the digit, as accepted).
        q2 = next(q for q in queue if q.digit_id == second)
        assert q2.non_digit and q2.label is not None and q2.top3[0][0] == 10
        model_second = None
        assert (d1.label, d1.needs_review) == (7, False)
        assert (d2.label, d2.blank, d2.needs_review) == (model_second, True, False)
        assert d3.needs_review and not d3.blank  # the x was undone
        rows = s.scalars(select(Correction).order_by(Correction.id)).all()
        assert [(c.digit_id, c.new_label, c.reviewer, c.source) for c in rows] == [
            (first, 7, "browser-user", "web"), (second, model_second, "browser-user", "web")]  # fmt: skip


def test_grid_mode_labels_many_on_one_screen(server: Any, page: Any) -> None:
    url, settings, batch = server
    page.goto(f"{url}/grid?batch={batch}")
    page.wait_for_selector("#review[data-ready='1']")
    cells = page.locator("#grid .cell")
    n = cells.count()
    assert n >= 3
    ids = [int(cells.nth(i).get_attribute("data-digit")) for i in range(3)]
    left0 = int(page.inner_text("#left"))
    for key in ("1", "2", "3"):
        page.keyboard.press(key)
    _until(lambda: _left(page) == left0 - 3)
    assert page.locator("#grid .cell.done").count() == 3
    with session_scope(settings) as s:
        assert [present(s.get(Digit, i)).label for i in ids] == [1, 2, 3]
        assert all(not present(s.get(Digit, i)).needs_review for i in ids)


def test_grid_accept_all_keeps_another_reviewers_correction(server: Any, page: Any) -> None:
    """`A` accepts every unlabelled crop on the grid as the page shows the model's answer: x for a crop the
    model takes for no digit (before: its best digit). A crop another reviewer corrected after the grid was
    loaded is not overwritten (before: their correction was replaced by the model's label): the server
    refuses it (409, naming them), the page says so and shows their label."""
    url, settings, batch = server
    page.goto(f"{url}/grid?batch={batch}")
    page.wait_for_selector("#review[data-ready='1']")
    with session_scope(settings) as s:
        shown = service.list_queue(s, batch_id=batch, limit=48)
    cells = page.locator("#grid .cell")
    assert [int(cells.nth(i).get_attribute("data-digit")) for i in range(cells.count())] == [q.digit_id for q in shown]
    nondigits = [q for q in shown if q.non_digit]
    plain = [q for q in shown if not q.non_digit and q.label is not None]
    assert nondigits and len(plain) >= 2
    taken = plain[0]
    theirs = (present(taken.label) + 1) % 10
    with session_scope(settings) as s:  # another reviewer, after this grid was loaded
        service.apply_correction(s, taken.digit_id, theirs, reviewer="bob", source="web")
    page.keyboard.press("A")
    _until(lambda: page.locator("#grid .cell.done").count() == len(shown), timeout=60)
    _until(lambda: "bob changed it" in page.inner_text("#status"))
    assert page.inner_text(f"#grid .cell[data-digit='{taken.digit_id}'] .mark") == f"→ {theirs}"
    with session_scope(settings) as s:
        d = present(s.get(Digit, taken.digit_id))
        assert d.label == theirs and [c.reviewer for c in d.corrections] == ["bob"]
        for q in nondigits:
            d = present(s.get(Digit, q.digit_id))
            assert (d.label, d.blank, d.corrections[-1].new_label) == (None, True, None), q.digit_id
        for q in plain[1:]:
            d = present(s.get(Digit, q.digit_id))
            assert (d.label, d.blank, d.corrections[-1].reviewer) == (q.label, False, "browser-user"), q.digit_id
