"""`digitreader models list|show`: the installed recognition models and which one is active."""

from __future__ import annotations

import logging

import typer

from digitreader.cli.output import err, print_json
from digitreader.errors import NotFoundError
from digitreader.settings import get_settings

log = logging.getLogger(__name__)

models_app = typer.Typer(
    name="models",
    help=(
        "The recognition models: those shipped in digitreader/models/ (manifest.json names the "
        "default), DIGITREADER_MODEL_PATH, and those registered in the database.\n\n"
        "  digitreader models list\n\n  digitreader models show"
    ),
    no_args_is_help=True,
)


@models_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the models; '*' marks the active one (the one `submit` uses).

    Example:  digitreader models list --json
    """
    from digitreader.registry import installed_models

    models = installed_models(get_settings())
    if as_json:
        print_json(models)
        return
    if not models:
        err.print("no models installed (digitreader/models/ is empty); train one: digitreader train")
        return
    for m in models:
        acc = f"{100 * m['mnist_test_accuracy']:.2f} %" if m["mnist_test_accuracy"] else "-"
        thr = f"{m['threshold']:.3f}" if m["threshold"] is not None else "-"
        flag = "*" if m["active"] else " "
        precisions = "fp32+int8" if m.get("int8") else "fp32"
        extra = f"  ERROR: {m['error']}" if m["error"] else ""
        if m["sha256_ok"] is False:
            extra += "  SHA-256 MISMATCH"
        typer.echo(
            f"{flag} {m['version']:<28} mnist {acc:>8}  threshold {thr:>5}  {precisions:<9} "
            f"{m['registry_status'] or '-':<9} {m['path']}{extra}"
        )


@models_app.command("show")
def show_cmd(
    version: str | None = typer.Argument(None, help="Model version (default: the active model)."),
) -> None:
    """Show one model's details as JSON (default: the active one, loaded and checked, with the model
    that splits string fields into digits under "splitter": see DIGITREADER_SPLITTER).

    Example:  digitreader models show
    """
    settings = get_settings()
    if version is None:
        from digitreader.pipeline.recognize import Predictor
        from digitreader.pipeline.split import splitter_model

        p = Predictor.load(None, settings)  # checks the SHA-256 and the model's I/O
        split_path = splitter_model(settings, p.info.path)
        splitter = p if split_path in (None, p.info.path) else Predictor.load(split_path, settings)
        s = splitter.info
        split = {"path": s.path, "sha256": s.sha256, "version": s.version, "arch": s.arch,
                 "precision": s.precision, "runtime_path": s.runtime_path, "setting": settings.splitter}  # fmt: skip
        print_json({**p.info.as_dict(), "metadata": p.info.metadata, "active": True, "splitter": split})
        return
    from digitreader.registry import installed_models

    for m in installed_models(settings):
        if m["version"] == version:
            print_json(m)
            return
    raise NotFoundError(f"no model with version {version!r}", hint="digitreader models list")


@models_app.command("promote")
def promote_cmd(
    version: str = typer.Argument(..., help="The candidate's version (digitreader models list)."),
    force: bool = typer.Option(False, "--force", help="Make it active even if it fails the gate (recorded)."),
) -> None:
    """Make a candidate the active model if it passes the gate: better on the frozen corrected digits,
    at most 0.05 points lost on MNIST test (both models evaluated now on the same frozen set).

    Exit code 0 when promoted, 3 when the gate refused it. Running pipelines and workers pick the
    new model up between documents, without a restart.

    Example:  digitreader models promote 0.2.0-ft1
    """
    from digitreader.registry import promote

    res = promote(get_settings(), version, force=force)
    print_json(res)
    for r in res["reasons"]:
        err.print(f"  {r}")
    err.print(
        f"{version}: "
        + (
            "promoted (forced past the gate)"
            if res["forced"]
            else "promoted"
            if res["promoted"]
            else "NOT promoted: the gate refused it"
        )
    )
    if not res["promoted"]:
        raise typer.Exit(3)


@models_app.command("rollback")
def rollback_cmd() -> None:
    """Retire the active model and make the one that was live before it active again.

    Example:  digitreader models rollback
    """
    from digitreader.registry import rollback

    res = rollback(get_settings())
    print_json(res)
    err.print(f"active model: {res['active']} (retired {res['retired']})")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app)
