"""`digitreader synth`: generate realistic sample scans with ground truth (thin adapter)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from digitreader.cli.output import err, progress, writable_folder
from digitreader.errors import UsageError
from digitreader.settings import get_settings

log = logging.getLogger(__name__)


def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write the scans and their NAME.truth.json into."),
    pages: int = typer.Option(10, "--pages", "-n", min=1, help="Number of pages to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same files."),
    kind: str = typer.Option("mixed", "--kind", help="form, cheque or mixed (70% forms)."),
    fmt: str = typer.Option("png", "--format", help="png, jpeg, tiff, pdf, bmp or mixed."),
    dpi: int = typer.Option(300, "--dpi", min=100, max=600, help="Resolution of the pages."),
    style: str = typer.Option("scan", "--style", help="Scanner realism: clean, scan (default) or rough."),
    per_file: int = typer.Option(1, "--per-file", min=1, help="Pages per file for TIFF and PDF (multi-page)."),
    layout: str | None = typer.Option(
        None, "--layout", help="Form layout: account, survey or order (default: random)."
    ),
    tiff_variant: str = typer.Option("8bit", "--tiff-variant", help="TIFF pixels: 8bit, 1bit, 16bit or alpha."),
    turned: float = typer.Option(
        0.0,
        "--turned",
        min=0.0,
        max=1.0,
        help="Share of pages scanned upside down or on a side (truth boxes follow; its 'turned' says how).",
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder holding mnist/ (default: DIGITREADER_DATA_DIR)."
    ),
) -> None:
    """Generate sample scans of forms and cheques from MNIST *test* digits, each with ground truth.

    Every file NAME.EXT gets NAME.truth.json ("digitreader.truth/v1": every field, every cell or
    digit box in page pixels, every label, blanks as null). The file names are printed on stdout.

    Example:  digitreader synth /tmp/scans --pages 20 --format mixed --seed 7
              digitreader synth /tmp/turned --pages 20 --turned 0.5   (half of them upside down or on a side)
    """
    from digitreader.synth import STYLES, generate
    from digitreader.synth.generate import FORMATS, KINDS
    from digitreader.synth.layouts import FORM_LAYOUTS

    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if style not in STYLES:
        raise UsageError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
    if tiff_variant not in ("8bit", "1bit", "16bit", "alpha"):
        raise UsageError(f"--tiff-variant must be 8bit, 1bit, 16bit or alpha, not {tiff_variant!r}")
    if layout is not None and layout not in FORM_LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(FORM_LAYOUTS)}, not {layout!r}")
    source_dir = data_dir or get_settings().data_dir
    writable_folder(out_dir)
    with progress(transient=True) as bar:
        task = bar.add_task("generating", total=pages)
        files = generate(
            out_dir,
            pages=pages,
            seed=seed,
            kind=kind,
            fmt=fmt,
            dpi=dpi,
            style=style,
            per_file=per_file,
            data_dir=source_dir,
            layout=layout,
            tiff_variant=tiff_variant,
            on_page=lambda n: bar.advance(task, n),
            turned=turned,
        )
    for f in files:
        typer.echo(str(f))
    err.print(f"wrote {len(files)} file(s), {pages} page(s) to {out_dir}")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
