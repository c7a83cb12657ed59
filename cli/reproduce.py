"""`probe reproduce`: the CMA paper's table from the datasets' folders, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import app


@app.command("reproduce")
def reproduce_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the feature files, one run folder per dataset, table.tex "
                                           "and table.md.")],
    waterbirds: Annotated[Path | None, typer.Option(help="Waterbirds folder (metadata.csv and images).",
                                                    show_default=False)] = None,
    celeba: Annotated[Path | None, typer.Option(help="CelebA folder (attributes, partition, images).",
                                                show_default=False)] = None,
    multinli: Annotated[Path | None, typer.Option(help="MultiNLI folder (metadata_random.csv and the text).",
                                                  show_default=False)] = None,
    demo: Annotated[bool, typer.Option(help="Also the bundled Waterbirds-style demo task.")] = False,
    encoder: Annotated[str | None, typer.Option(help="Image encoder for Waterbirds, CelebA and the demo (the "
                                                     "authors': a CLIP ViT-B/16 at 384 px from timm, with its "
                                                     "weights file). Default for the demo: its own.",
                                                show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(help="Weights of --encoder.", show_default=False)] = None,
    text_encoder: Annotated[str, typer.Option(help="Text encoder for MultiNLI (the authors used BERT's pooled "
                                                   "features: hf:FOLDER).")] = "minilm",
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
    smoke: Annotated[bool, typer.Option(help="One value per grid axis and 20 steps: checks the pipeline end to "
                                             "end; the numbers mean nothing. Its runs and tables go to OUT/smoke/, "
                                             "apart from the real ones, and the tables say so.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Fit again a run folder that holds another fit (other settings, "
                                                 "another probe version) instead of refusing it, and extract again "
                                                 "a feature file OUT/<dataset>.h5 of other rows (another encoder). "
                                                 "A complete run of this very fit (or feature file of this "
                                                 "extraction) is reused, and an interrupted one resumed, "
                                                 "without it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages.")] = False,
) -> None:
    """Extract what is missing (resumable), fit every row of `--protocol cma-paper` on each
    dataset given, and write the paper's table (OUT/table.tex, OUT/table.md). A CelebA
    grid wants a GPU: on two CPU cores it takes hours.

    Rerunning resumes: a complete run of exactly this fit is reused, an interrupted one
    (Ctrl-C, SIGTERM, a crash) is finished; a run folder holding any other fit is
    refused unless --overwrite."""
    import sys

    from cli import interrupts
    from cli.progress import StepsBar, rows_bar, stderr_console
    from probe.study.reproduce import Source, reproduce

    console = stderr_console(soft_wrap=True)
    sources = [Source(name, root, encoder, weights) for name, root in
               (("waterbirds", waterbirds), ("celeba", celeba)) if root is not None]
    if multinli is not None:
        sources.append(Source("multinli", multinli, text_encoder))
    if demo:
        sources.append(Source("demo", None, encoder, weights))

    try:
        written = reproduce(sources, out, device=device, smoke=smoke, overwrite=overwrite,
                            extract_progress=None if quiet else (lambda _: rows_bar(console)),
                            fit_progress=None if quiet else (lambda name: StepsBar(console, f"fitting {name}")),
                            notify=(lambda _: None) if quiet else (lambda msg: console.print(msg, markup=False)))
    except KeyboardInterrupt:
        print(f"probe reproduce: {interrupts.signal_name()}: stopped; what was extracted and fitted is kept, and "
              "the same command resumes it (no table was written)", file=sys.stderr)
        raise typer.Exit(130) from None
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
