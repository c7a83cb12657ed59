"""`probe extract`, `probe info`, `probe merge`: stage 1 on the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.app import app

_TEXT_DATASETS = ("multinli",)


@app.command("extract")
def extract_cmd(
    dataset: str = typer.Argument(..., metavar="DATASET",
                                  help="demo (bundled, built from scikit-learn digits), waterbirds, celeba, "
                                       "multinli or table (any CSV or TSV table; see the column options)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE.h5",
                             help="Feature file to write. Rows go to FILE.h5.partial first; rerunning the same "
                                  "command after an interruption resumes it. With --shard i/N the file is "
                                  "FILE.shard<i>of<N>.h5.", show_default=False),
    root: Path | None = typer.Option(None, "--root", metavar="DIR",
                                     help="The dataset's folder, in its standard layout (not needed for demo).",
                                     show_default=False),
    encoder: str | None = typer.Option(None, "--encoder", "-e", metavar="ENC",
                                       help="open_clip:<arch> (with --weights), hf:<name or folder>, minilm or "
                                            "efficientnet-lite0. Default: efficientnet-lite0 for demo, minilm for "
                                            "text datasets; required otherwise.", show_default=False),
    weights: str | None = typer.Option(None, "--weights", "-w", metavar="W",
                                       help="open_clip weights: a checkpoint file, local-dir:FOLDER (with "
                                            "open_clip_config.json), a pretrained tag (needs internet or a filled "
                                            "cache) or none (random init). efficientnet-lite0: another state_dict "
                                            "file.", show_default=False),
    pooling: str | None = typer.Option(None, "--pooling", metavar="P",
                                       help="Text encoders: cls, mean or pooler. Default: the model's own "
                                            "(sentence-transformers config) or cls.", show_default=False),
    tower: str | None = typer.Option(None, "--tower", metavar="image|text",
                                     help="open_clip tower; default: the dataset's modality.", show_default=False),
    max_length: int | None = typer.Option(None, "--max-length", metavar="N",
                                          help="Text encoders: truncate to N tokens (pairs: longest first). "
                                               "Default: the model's limit (256 for minilm, 512 for BERT).",
                                          show_default=False),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", metavar="N",
                                          help="Rows per forward pass. Default: 256 on CUDA; on CPU 16 for "
                                               "images, 64 for texts; when resuming, the unfinished file's.",
                                          show_default=False),
    workers: int | None = typer.Option(None, "--workers", "-j", metavar="N",
                                       help="Processes that decode and preprocess (or tokenise) while the model "
                                            "encodes. 0: in this process, each batch of images decoded by a "
                                            "thread per core between forward passes (on a CPU the model needs "
                                            "every core). Default: 0 on CPU, min(4, CPU cores) on CUDA.",
                                       show_default=False),
    device: str = typer.Option("auto", "--device", metavar="DEV",
                               help="auto (CUDA if available), cpu, cuda or cuda:N. CUDA runs in mixed "
                                    "precision (float16 autocast)."),
    dtype: str = typer.Option("float32", "--dtype", metavar="float32|float16",
                              help="Storage type of the features (encoding itself is unaffected)."),
    shard: str | None = typer.Option(None, "--shard", metavar="i/N",
                                     help="Encode only part i of N (numbered from 0), e.g. $SLURM_ARRAY_TASK_ID/8; "
                                          "join the parts with `probe merge`.", show_default=False),
    skip_bad: bool = typer.Option(False, "--skip-bad",
                                  help="Leave out rows whose image cannot be read (their ids are listed in the "
                                       "file's 'skipped' attribute) instead of stopping at the first one."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing FILE.h5 and discard an unfinished FILE.h5.partial."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary (warnings still show)."),
    target: str | None = typer.Option(None, "--target", help="celeba: target attribute (default Blond_Hair).",
                                      show_default=False),
    spurious: str | None = typer.Option(None, "--spurious",
                                        help="celeba: spurious attribute (default Male).", show_default=False),
    metadata: str | None = typer.Option(None, "--metadata", metavar="FILE",
                                        help="table: the CSV or TSV table; other datasets: a metadata file name "
                                             "overriding the standard one.", show_default=False),
    image_col: str | None = typer.Option(None, "--image-col", help="table: column of image paths.",
                                         show_default=False),
    text_col: str | None = typer.Option(None, "--text-col",
                                        help="table: text column (two, comma-separated, for sentence pairs).",
                                        show_default=False),
    label_col: str | None = typer.Option(None, "--label-col", help="table: label column.", show_default=False),
    attr_col: str | None = typer.Option(None, "--attr-col", help="table: spurious attribute column.",
                                        show_default=False),
    group_col: str | None = typer.Option(None, "--group-col", help="table: group column (instead of an "
                                                                   "attribute).", show_default=False),
    split_col: str | None = typer.Option(None, "--split-col", help="table: split column.", show_default=False),
    text_source: str | None = typer.Option(None, "--text-source", metavar="auto|jsonl|glue",
                                           help="multinli: where the raw text comes from.", show_default=False),
) -> None:
    """Encode a dataset with a frozen encoder into an HDF5 feature file (resumable, shardable)."""
    from base.device import resolve_device
    from base.errors import UserError
    from base.io import check_writable_dir
    from features.datasets import dataset_info, load_dataset
    from features.encoders import load_encoder
    from features.extract import DTYPES, extract, parse_shard, shard_output_path, tune_cpu_allocator

    dataset_info(dataset)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose float32 or float16")
    shard_spec = parse_shard(shard)
    out = shard_output_path(out, shard_spec)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / 'features.h5'}")
    check_writable_dir(out.parent if str(out.parent) else Path("."), "--out")
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_cpu_allocator()
    if root is not None and not root.exists():
        raise UserError(f"--root {root}: no such folder")
    # Dataset options reach the adapter as keyword arguments, only those given.
    given = {"target": target, "spurious": spurious, "metadata": metadata, "image_col": image_col,
             "text_col": text_col, "label_col": label_col, "attr_col": attr_col, "group_col": group_col,
             "split_col": split_col, "text_source": text_source}
    options = {k: v for k, v in given.items() if v is not None}
    if encoder is None:
        if dataset == "demo":
            encoder = "efficientnet-lite0"
        elif dataset in _TEXT_DATASETS:
            encoder = "minilm"
    spec = load_dataset(dataset, root, **options)
    if encoder is None:
        if spec.modality == "text":
            encoder = "minilm"
        else:
            raise UserError(f"--encoder is required for image dataset {dataset!r}: e.g. --encoder open_clip:ViT-B-32 "
                            "--weights FILE, or --encoder efficientnet-lite0")
    # open_clip has both towers: default to the dataset's; other encoders have one, checked by extract().
    default_tower = spec.modality if encoder.startswith("open_clip:") else None
    enc = load_encoder(encoder, weights=weights, device=dev, pooling=pooling, tower=tower or default_tower,
                       max_length=max_length)
    extract(spec, enc, out, batch_size=batch_size, workers=workers, dtype=dtype, shard=shard_spec,
            skip_bad=skip_bad, overwrite=overwrite, quiet=quiet)


@app.command("info")
def info_cmd(
    file: Path = typer.Argument(..., metavar="FILE.h5", help="A feature file written by `probe extract`."),
) -> None:
    """Show what a feature file holds: rows per split and group, encoder, weights, preprocessing."""
    from rich.console import Console
    from rich.table import Table

    from features.store import SPLITS, decode_json_attr, summarize

    s = summarize(file)
    attrs = s["attrs"]
    console = Console(highlight=False, soft_wrap=True)
    complete = bool(attrs.get("complete", False))
    state = "complete" if complete else f"INCOMPLETE ({attrs.get('rows_written', '?')} rows written)"
    skipped = decode_json_attr(attrs.get("skipped"), [])
    lines = [
        ("file", s["path"]), ("status", state), ("rows", f"{s['rows']} x {s['dim']} ({s['dtype']})"),
        ("dataset", attrs.get("dataset")), ("encoder", attrs.get("encoder")), ("weights", attrs.get("weights")),
        ("preprocess", attrs.get("preprocess")), ("precision", attrs.get("precision")),
        ("shard", attrs.get("shard") or None), ("skipped", f"{len(skipped)} row(s)" if skipped else None),
        ("created", attrs.get("created")), ("probe version", attrs.get("probe_version")),
        ("classes", ", ".join(map(str, attrs.get("class_names", [])))),
    ]
    for key, value in lines:
        if value not in (None, ""):
            console.print(f"[bold]{key:>13}[/bold]  {value}")
    table = Table(title="rows per group and split")
    table.add_column("group")
    for split in SPLITS:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    counts = s["counts"]
    groups = list(next(iter(counts.values())).keys()) if counts else []
    for g in groups:
        per = [counts[sp].get(g, 0) for sp in SPLITS]
        table.add_row(g, *map(str, per), str(sum(per)))
    totals = [sum(counts[sp].values()) for sp in SPLITS]
    table.add_row("[bold]all[/bold]", *map(str, totals), str(sum(totals)))
    console.print(table)


@app.command("merge")
def merge_cmd(
    out: Path = typer.Argument(..., metavar="OUT.h5", help="The merged feature file to write."),
    shards: list[Path] = typer.Argument(..., metavar="SHARD.h5...",
                                        help="Every shard written by `probe extract --shard i/N`, in any order."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT.h5 if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Join the shards of one extraction into the file an unsharded run writes (checked, atomic)."""
    from features.merge import merge

    merge(out, shards, overwrite=overwrite, quiet=quiet)
