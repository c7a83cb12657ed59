"""`probe extract`, `probe info`, `probe merge`: stage 1 on the command line.

The dataset argument, the dataset options, the encoder choices and their help are
built from what :mod:`features.datasets` and :mod:`features.encoders` declare:
this module names no dataset and no encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from base.errors import either
from cli.app import app
from cli.flags import declared_help
from cli.options import OptionSpec, with_options
from features.datasets import registry as dataset_registry
from features.encoders import BATCH_SIZES, MODALITIES
from features.encoders import registry as encoder_registry
from features.schema import FEATURE_DTYPES


def _dataset_help() -> str:
    datasets = dataset_registry.datasets()
    return either(f"{name} ({info.help})" if info.help else name for name, info in datasets.items()) + "."


def _root_help() -> str:
    unused = [name for name, info in dataset_registry.datasets().items() if info.root == "unused"]
    return "The dataset's folder, in its standard layout" + (f" (not needed for {either(unused)})." if unused else ".")


def _encoder_help() -> str:
    families = encoder_registry.families()
    defaults = [f"{info.default_encoder} for {name}"
                for name, info in dataset_registry.datasets().items() if info.default_encoder]
    defaults += [f"{f.name} for {modality} datasets" for f in families for modality in f.default_for]
    return declared_help(f"{either(f.help for f in families)}. Default: {', '.join(defaults)}; required otherwise.")


def _batch_size_help() -> str:
    parts = []
    for device in BATCH_SIZES[MODALITIES[0]]:
        sizes = {m: BATCH_SIZES[m][device] for m in MODALITIES}
        if len(set(sizes.values())) == 1:
            parts.append(f"{sizes[MODALITIES[0]]} on {device.upper()}")
        else:
            parts.append(f"on {device.upper()} " + ", ".join(f"{n} for {m}s" for m, n in sizes.items()))
    return f"Rows per forward pass. Default: {'; '.join(parts)}; when resuming, the unfinished file's."


def _encoder_option(name: str) -> str:
    return declared_help(encoder_registry.option_help(name))


DATASET_OPTIONS = [OptionSpec(name, declared_help(dataset_registry.option_help(name)), metavar=takers[0][1].metavar)
                   for name, takers in dataset_registry.options().items()]


@app.command("extract")
@with_options(DATASET_OPTIONS, into="dataset_options")
def extract_cmd(
    dataset: str = typer.Argument(..., metavar="DATASET", help=_dataset_help()),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE.h5",
                             help="Feature file to write. Rows go to FILE.h5.partial first; rerunning the same "
                                  "command after an interruption resumes it. With --shard i/N the file is "
                                  "FILE.shard<i>of<N>.h5.", show_default=False),
    root: Path | None = typer.Option(None, "--root", metavar="DIR", help=_root_help(), show_default=False),
    encoder: str | None = typer.Option(None, "--encoder", "-e", metavar="ENC", help=_encoder_help(),
                                       show_default=False),
    weights: str | None = typer.Option(None, "--weights", "-w", metavar="W", help=_encoder_option("weights"),
                                       show_default=False),
    pooling: str | None = typer.Option(None, "--pooling", metavar="P", help=_encoder_option("pooling"),
                                       show_default=False),
    tower: str | None = typer.Option(None, "--tower", metavar="|".join(MODALITIES),
                                     help=_encoder_option("tower"), show_default=False),
    max_length: int | None = typer.Option(None, "--max-length", metavar="N", help=_encoder_option("max_length"),
                                          show_default=False),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", metavar="N", help=_batch_size_help(),
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
    dtype: str = typer.Option(FEATURE_DTYPES[0], "--dtype", metavar="|".join(FEATURE_DTYPES),
                              help="Storage type of the features (encoding itself is unaffected)."),
    shard: str | None = typer.Option(None, "--shard", metavar="i/N",
                                     help="Encode only part i of N (numbered from 0), e.g. $SLURM_ARRAY_TASK_ID/8; "
                                          "join the parts with `probe merge`.", show_default=False),
    skip_bad: bool = typer.Option(False, "--skip-bad",
                                  help="Leave out rows whose image cannot be read (their ids are listed in the "
                                       "file's 'skipped' attribute) instead of stopping at the first one."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing FILE.h5 and discard an unfinished FILE.h5.partial."),
    prompts: list[str] | None = typer.Option(
        None, "--prompts", metavar="TEMPLATE",
        help="Zero-shot rows: a class prompt template with {} for the class name (\"a photo of a {}.\"); "
             "repeat it for several, or give a file of templates, one per line. A two-tower encoder "
             "(open_clip) stores each class's normalised text embedding, averaged over the templates, for "
             "`probe fit --method zeroshot`.", show_default=False),
    class_names: str | None = typer.Option(
        None, "--class-names", metavar="A,B,...",
        help="The class names filled into --prompts, one per class in the file's class order. Default: the "
             "dataset's class names.", show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary (warnings still show)."),
    dataset_options: dict[str, Any] | None = None,
) -> None:
    """Encode a dataset with a frozen encoder into an HDF5 feature file (resumable, shardable)."""
    import sys

    from base.device import resolve_device
    from base.errors import UserError
    from base.outputs import link_target
    from base.progress import ignore
    from cli.flags import flag_names
    from cli.interrupts import signal_name
    from cli.progress import rows_bar, stderr_console, warner
    from features.datasets import dataset_info, load_dataset
    from features.encoders import load_encoder
    from features.extract import (
        check_encoder_choice,
        check_output,
        check_replaced,
        check_settings,
        choose_encoder,
        extract,
        extraction_lock,
        parse_shard,
        shard_output_path,
        stopped,
    )
    from features.loading import tune_cpu_allocator
    from features.prompts import prompt_class_names, read_templates

    # Every value that can be checked is checked before anything slow (the model) is loaded.
    dataset_info(dataset)  # a mistyped name is refused before anything slow runs
    check_settings(batch_size, workers, dtype)
    if prompts:
        read_templates(prompts)
    shard_spec = parse_shard(shard)
    out = link_target(shard_output_path(out, shard_spec))  # a link stays: the file it names is written
    check_output(out)
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_cpu_allocator()
    if root is not None and not root.exists():
        raise UserError(f"--root {root}: no such folder")
    spec = load_dataset(dataset, root, **(dataset_options or {}))
    if prompts:
        prompt_class_names(spec.class_names, class_names)
    check_replaced(out)
    name = choose_encoder(dataset, spec.modality, encoder)
    check_encoder_choice(name, spec, tower)
    console = stderr_console(soft_wrap=True)
    with extraction_lock(out):  # a second extraction into `out` is refused before it loads a model
        try:
            enc = load_encoder(name, weights=weights, device=dev, pooling=pooling, tower=tower,
                               max_length=max_length, modality=spec.modality)
            result = extract(spec, enc, out, batch_size=batch_size, workers=workers, dtype=dtype, shard=shard_spec,
                             skip_bad=skip_bad, overwrite=overwrite, prompts=prompts, class_names=class_names,
                             progress=None if quiet else rows_bar(console),
                             warn=warner(console, "extract"), note=ignore if quiet else console.print)
        except KeyboardInterrupt:
            message = f"probe extract: interrupted ({signal_name()}); {stopped(out, overwrite)}"
            print(flag_names(message, ["extract"]), file=sys.stderr)
            raise typer.Exit(130) from None
    if quiet:
        return
    if result.status == "already complete":
        console.print(f"{result.path} is already complete ({result.rows} rows); nothing to do "
                      "(--overwrite to extract again)")
    else:
        console.print(f"wrote {result.rows} rows x {result.dim} features to {result.path} in {result.seconds:.1f} s")


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
        ("classes", ", ".join(map(str, attrs.get("class_names", [])))), ("zero-shot", _prompts_line(attrs)),
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


def _prompts_line(attrs: dict[str, Any]) -> str | None:
    meta = attrs.get("prompts")
    if not isinstance(meta, dict):
        return None
    templates = meta.get("templates", [])
    return (f"{len(templates)} template(s) ({templates[0]!r}{', ...' if len(templates) > 1 else ''}) for "
            f"{', '.join(map(str, meta.get('class_names', [])))}; logit scale {meta.get('logit_scale', 0):.4g}")


@app.command("merge")
def merge_cmd(
    out: Path = typer.Argument(..., metavar="OUT.h5", help="The merged feature file to write."),
    shards: list[Path] = typer.Argument(..., metavar="SHARD.h5...",
                                        help="Every shard written by `probe extract --shard i/N`, in any order."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT.h5 if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Join the shards of one extraction into the file an unsharded run writes (checked, atomic)."""
    from cli.progress import count_bar, stderr_console
    from features.merge import merge

    console = stderr_console()
    result = merge(out, shards, overwrite=overwrite, progress=None if quiet else count_bar(console))
    if not quiet:
        console.print(f"merged {result.shards} shards, {result.rows} rows, into {result.path} in "
                      f"{result.seconds:.1f} s")
