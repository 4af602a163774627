"""`digitreader review`: the review page (default) and `review list|label|undo|show` for scripting.

Thin adapters over `digitreader.review.service` (the same functions the web page calls).
"""

from __future__ import annotations

import logging

import typer

from digitreader.cli.output import err, print_json
from digitreader.settings import get_settings

log = logging.getLogger(__name__)

review_app = typer.Typer(
    name="review",
    help=(
        "Review flagged digits: a keyboard-first web page (the default), or list/label from scripts.\n\n"
        "  digitreader review                        # page on http://127.0.0.1:8765/\n\n"
        "  digitreader review --host 0.0.0.0 --token S3CRET   # other machines: a token is required\n\n"
        "  digitreader review list --batch 7 --json  # the queue, hardest first\n\n"
        "  digitreader review label 1234 7           # digit 1234 is a 7 (x = not a digit / blank)\n\n"
        "  digitreader review undo                   # take back your last correction"
    ),
    invoke_without_command=True,
)


@review_app.callback()
def review_main(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Off loopback a token is required."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on."),
    token: str | None = typer.Option(
        None, "--token", help="Access token (default DIGITREADER_REVIEW_TOKEN); required off loopback."
    ),
    reviewer: str | None = typer.Option(
        None, "--reviewer", help="Name stored with corrections (default DIGITREADER_REVIEWER, else $USER)."
    ),
) -> None:
    """Serve the review page (when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"reviewer": reviewer}
        return
    from digitreader.review.app import serve

    serve(get_settings(), host=host, port=port, token=token, reviewer=reviewer)


@review_app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Off loopback a token is required."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on."),
    token: str | None = typer.Option(None, "--token", help="Access token (default DIGITREADER_REVIEW_TOKEN)."),
    reviewer: str | None = typer.Option(None, "--reviewer", help="Name stored with corrections."),
) -> None:
    """Serve the review page (same as plain `digitreader review`).

    Example:  digitreader review serve --port 9000
    """
    from digitreader.review.app import serve

    serve(get_settings(), host=host, port=port, token=token, reviewer=reviewer)


def _label_text(label: int | None) -> str:
    return "x" if label is None else str(label)


@review_app.command("list")
def list_cmd(
    batch: int | None = typer.Option(None, "--batch", "-b", help="Only this batch (default: all batches)."),
    field: str | None = typer.Option(None, "--field", "-f", help="Only fields with this name."),
    order: str = typer.Option("confidence", "--order", help="confidence (lowest first) or margin (top-2 gap)."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="At most N digits."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (JSON Lines)."),
) -> None:
    """List the flagged digits still to review, hardest first (data on stdout, a count on stderr).

    Columns: digit id, batch, document, page, field, position, model's label, confidence, top-3.

    Example:  digitreader review list --batch 7 --json | jq .digit_id
    """
    from digitreader.db import session_scope
    from digitreader.review import service

    with session_scope(get_settings()) as s:
        if batch is not None:  # one that does not exist, or that no batch can have, is "not found" (exit 10)
            from digitreader.db.store import get_batch

            get_batch(s, batch)
        items = service.list_queue(s, batch_id=batch, field=field, order=order, limit=limit)
        counts = service.queue_counts(s, batch_id=batch, field=field)
    for it in items:
        if as_json:
            print_json(it.as_dict())
        else:
            top = " ".join(f"{'x' if int(k) == 10 else int(k)}:{p:.3f}" for k, p in it.top3)
            conf = "-" if it.confidence is None else f"{it.confidence:.4f}"
            typer.echo(
                f"{it.digit_id}\t{it.batch_id}\t{it.document}\t{it.page}\t{it.field}\t{it.position}\t"
                f"{_label_text(it.label)}\t{conf}\t{top}"
            )
    err.print(f"{counts['left']} digit(s) left to review, {counts['reviewed']} reviewed, "
              f"{counts['documents_left']} document(s) need review")  # fmt: skip


@review_app.command("label")
def label_cmd(
    ctx: typer.Context,
    digit_id: int = typer.Argument(..., help="Digit id (first column of `review list`)."),
    label: str = typer.Argument(..., help="0-9, or x for 'not a digit / blank'."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Set a digit's label (the correction is stored with your name and the model version).

    Example:  digitreader review label 1234 7      digitreader review label 1235 x
    """
    from digitreader.db import session_scope
    from digitreader.review import service

    settings = get_settings()
    new = service.parse_label(label)
    who = service.reviewer_name(settings, (ctx.obj or {}).get("reviewer"))
    with session_scope(settings) as s:
        res = service.apply_correction(s, digit_id, new, reviewer=who, source="cli")
    if as_json:
        print_json(res.as_dict())
    else:
        verb = "accepted" if res.accepted else f"{_label_text(res.old_label)} -> {_label_text(res.new_label)}"
        err.print(f"digit {res.digit_id}: {verb}; field value {res.field_value!r}; "
                  f"document {res.document_id} {res.document_status}")  # fmt: skip


@review_app.command("undo")
def undo_cmd(
    ctx: typer.Context,
    correction: int | None = typer.Option(None, "--correction", help="Undo this correction id."),
    anyone: bool = typer.Option(False, "--any", help="Undo the latest correction by anyone, not just yours."),
) -> None:
    """Undo your latest correction (or --correction ID): the digit is flagged again as before.

    Example:  digitreader review undo
    """
    from digitreader.db import session_scope
    from digitreader.review import service

    settings = get_settings()
    who = None if anyone or correction else service.reviewer_name(settings, (ctx.obj or {}).get("reviewer"))
    with session_scope(settings) as s:
        res = service.undo(s, reviewer=who, correction_id=correction)
    err.print(f"undid correction {res.correction_id}: digit {res.digit_id} is back to "
              f"{_label_text(res.label)}; document {res.document_status}")  # fmt: skip


@review_app.command("show")
def show_cmd(digit_id: int = typer.Argument(..., help="Digit id.")) -> None:
    """Show one digit as JSON: label, top-3, field, document and its corrections.

    Example:  digitreader review show 1234
    """
    from digitreader.db import session_scope
    from digitreader.review import service

    with session_scope(get_settings()) as s:
        print_json(service.digit_context(s, digit_id))


def register(app: typer.Typer) -> None:
    app.add_typer(review_app)
