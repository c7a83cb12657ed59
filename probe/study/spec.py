"""The study file (TOML) and its jobs: each an ordinary `probe extract`, `probe merge`
or `probe fit` command line with its own folder.

A study is feature files (given, or extracted from a dataset with an encoder) times
method groups (each with its grid flags, or a protocol); every pair is one fit job
(one per method of the group with ``split = true``). An extraction with ``shards = N``
is N `probe extract --shard i/N` jobs and one `probe merge` job. Paths in the file
are relative to the file's folder. The layout is in :func:`load_study`'s docstring and
in the README's "Studies and clusters".
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import UserError
from features.extract import shard_output_path
from features.schema import FEATURE_DTYPES
from probe.methods import all_options, all_params, get_method
from probe.methods.protocols import parse_name
from probe.train.settings import check_dtype, setting_kind, user_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    import tomli as tomllib

#: `probe fit` flags a study may set besides the grid and the settings
FIT_EXTRAS = ("protocol", "device", "dtype", "allow_incomplete")
#: `probe extract` flags a study's ``[features.options]`` may set besides the dataset's
#: and the encoder's options (``root``, ``encoder``, ``weights`` and ``shards`` are keys
#: of ``[[features]]``; ``out`` and ``shard`` the study's)
EXTRACT_KEYS = ("batch_size", "workers", "dtype", "device", "skip_bad", "prompts", "class_names")
EXTRACT_KINDS: dict[str, type] = {"batch_size": int, "workers": int, "max_length": int, "skip_bad": bool}
#: `probe extract` options given once per value (``--prompts A --prompts B``): a list is
#: not one comma-joined value there
EXTRACT_REPEATED = ("prompts",)
#: `probe extract` switches with no ``--no-`` form: false, their default, is said by leaving them out
EXTRACT_SWITCHES = ("skip_bad",)
#: the Slurm resources a job asks for (``[slurm]`` or the command line)
SLURM_KEYS = ("partition", "time", "gpus", "cpus", "mem", "parallelism")
#: the Slurm resources that are counts: what they count and the least each may be
SLURM_COUNTS = {"time": ("minutes", 1), "gpus": ("GPUs", 0), "cpus": ("CPUs", 1), "parallelism": ("array jobs", 1)}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Job:
    """One command of the study: ``argv`` (probe's arguments), the jobs it needs first,
    its output (relative to the study folder) and what the report calls it."""

    id: str
    kind: str  # "extract", "merge" or "fit"
    argv: tuple[str, ...]
    output: str
    deps: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "argv": list(self.argv), "output": self.output,
                "deps": list(self.deps), "labels": self.labels}


@dataclass
class Study:
    path: Path  # the study file
    out: Path  # the study folder
    jobs: list[Job]
    launcher: str = "local"
    workers: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)


def load_study(path: str | Path, out: str | Path | None = None) -> Study:
    """Read and check a study file; every mistake is a UserError naming the file and the entry.

    Tables: ``[study]`` (``out``, ``launcher``, ``jobs``), ``[fit]`` (any `probe fit`
    flag, for every fit), ``[[features]]`` (``file``, or ``dataset``, ``root``,
    ``encoder``, ``weights``, ``shards``, ``[features.options]``), ``[[methods]]``
    (``method`` or ``methods``, grid flags and settings, ``protocol``, ``split``) and
    ``[slurm]`` (``partition``, ``time`` in minutes, ``gpus``, ``cpus``, ``mem``,
    ``parallelism``).
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"study file {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"study file {p} cannot be read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"study file {p} is not valid TOML: {exc}") from exc
    where = str(p)
    _only(data, ("study", "fit", "features", "methods", "slurm"), where)
    head = _table(data, "study", where)
    _only(head, ("out", "launcher", "jobs"), f"{where} [study]")
    here = p.resolve().parent
    folder = Path(out).resolve() if out is not None else _path(here, head.get("out", f"{p.stem}.study"))
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{where}: the study folder {folder} is a file; give a folder as `out`")
    shared = _table(data, "fit", where)
    _check_fit(shared, f"{where} [fit]")
    feature_jobs = [_features(here, folder, e, i, where) for i, e in enumerate(_entries(data, "features", where))]
    groups = [g for i, e in enumerate(_entries(data, "methods", where)) for g in _groups(e, i, shared, where)]
    _unique([f[0] for f in feature_jobs], "[[features]]", where)
    _unique([g[0] for g in groups], "[[methods]]", where)
    jobs = [j for _, js, _, _ in feature_jobs for j in js]
    for fname, _, file, labels in feature_jobs:
        needs = tuple(j.id for j in jobs if folder / j.output == file)  # its extraction (or merge), if any
        for gname, methods, flags in groups:
            out_rel = f"jobs/fit-{fname}-{gname}/run"
            argv = ("fit", str(file), *(("--method", ",".join(methods)) if methods else ()), "--out",
                    str(folder / out_rel), *flags, "--quiet")
            jobs.append(Job(f"fit-{fname}-{gname}", "fit", argv, out_rel, needs,
                            {**labels, "methods": gname}))
    _distinct_ids(jobs, where)
    workers = head.get("jobs")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise UserError(f"{where} [study]: `jobs` must be a whole number >= 1")
    slurm = _table(data, "slurm", where)
    _only(slurm, SLURM_KEYS, f"{where} [slurm]")
    check_slurm(slurm, f"{where} [slurm]")
    return Study(p, folder, jobs, str(head.get("launcher", "local")), workers, slurm)


def check_slurm(resources: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``resources`` (``[slurm]``'s or the flags') when each is one Slurm can be asked for:
    the counts whole numbers (``time`` in minutes), ``mem`` gigabytes (:func:`memory_gb`),
    ``partition`` a name; else a UserError naming ``where`` (when given) and the key."""
    for key, value in resources.items():
        _checked(lambda key=key, value=value: _slurm_value(key, value), where)
    return resources


def _slurm_value(key: str, value: Any) -> None:
    if key in SLURM_COUNTS:
        what, least = SLURM_COUNTS[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"`{key}` {value!r}: give a whole number of {what}, at least {least}")
    elif key == "mem":
        memory_gb(value)
    elif key == "partition" and (not isinstance(value, str) or not value or any(c.isspace() for c in value)):
        raise UserError(f"`partition` {value!r}: give the name of a partition (or a comma list of them)")


def memory_gb(value: Any) -> int:
    """``32``, ``"32G"``, ``"32GB"`` or ``"500M"`` as whole gigabytes (at least 1)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([MGT]?)B?\s*", str(value), re.IGNORECASE)
    if isinstance(value, bool) or not m:
        raise UserError(f"`mem` {value!r}: give gigabytes, e.g. 32 or 32G (or 500M)")
    scale = {"": 1, "G": 1, "M": 1 / 1024, "T": 1024}[m.group(2).upper()]
    return max(1, round(float(m.group(1)) * scale))


def _distinct_ids(jobs: list[Job], where: str) -> None:
    """Each job has its own folder, named by its id; names with ``-`` can make two alike
    (features ``wb-clip`` × methods ``erm`` and features ``wb`` × methods ``clip-erm``)."""
    first: dict[str, Job] = {}
    for job in jobs:
        if job.id in first:
            raise UserError(f"{where}: {_described(first[job.id])} and {_described(job)} would both be job "
                            f"{job.id!r} (one folder); give one of them another `name`")
        first[job.id] = job


def _described(job: Job) -> str:
    features = f"[[features]] {job.labels.get('features')!r}"
    return f"{features} × [[methods]] {job.labels['methods']!r}" if job.kind == "fit" else f"the {job.kind} of {features}"


def _only(table: dict[str, Any], allowed: tuple[str, ...] | list[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; use {', '.join(allowed)}")


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key!r} must be a table ([{key}])")
    return value


def _entries(data: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = data.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(e, dict) for e in value):
        raise UserError(f"{where}: needs at least one [[{key}]] entry")
    return value


def _unique(names: list[str], what: str, where: str) -> None:
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise UserError(f"{where}: two {what} entries are named {seen[0]!r}; give each its own `name`")


def _path(here: Path, text: Any) -> Path:
    return (here / Path(str(text)).expanduser()).resolve()


def _name(entry: dict[str, Any], default: str, where: str) -> str:
    name = str(entry.get("name", default))
    if not _NAME.match(name):
        raise UserError(f"{where}: name {name!r} must be letters, digits and . _ + - (it names a folder)")
    return name


def _features(here: Path, folder: Path, e: dict[str, Any], i: int,
              where: str) -> tuple[str, list[Job], Path, dict[str, str]]:
    """(name, extraction jobs, the feature file, labels) of one [[features]] entry."""
    at = f"{where} [[features]] #{i + 1}"
    _only(e, ("name", "file", "dataset", "root", "encoder", "weights", "shards", "options"), at)
    if "file" in e:
        if set(e) - {"name", "file"}:
            raise UserError(f"{at}: give `file` (a feature file) or the extraction keys, not both")
        file = _path(here, e["file"])
        _check_readable(file, at)
        return _name(e, file.stem, at), [], file, {"features": _name(e, file.stem, at)}
    if "dataset" not in e:
        raise UserError(f"{at}: give `file` (a feature file) or `dataset` (with root, encoder, ...) to extract")
    name = _name(e, str(e["dataset"]), at)
    file = folder / "features" / f"{name}.h5"
    args = [str(e["dataset"]), *(("--root", str(_path(here, e["root"]))) if "root" in e else ())]
    args += [*(("--encoder", str(e["encoder"])) if "encoder" in e else ())]
    if "weights" in e:  # a file, a folder, or a prefix such as local-dir:PATH
        w = str(e["weights"])
        args += ["--weights", w if ":" in w or not (here / Path(w).expanduser()).exists() else str(_path(here, w))]
    options = e.get("options", {})
    if not isinstance(options, dict):
        raise UserError(f"{at}: `options` must be a table of `probe extract` flags")
    _check_extraction(here, e, options, at)
    args += [a for k, v in options.items() for a in _flag(k, v, EXTRACT_REPEATED, EXTRACT_SWITCHES)]
    labels = {"features": name, "dataset": str(e["dataset"]), "encoder": str(e.get("encoder", "default"))}
    shards = e.get("shards", 1)
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise UserError(f"{at}: `shards` must be a whole number >= 1")
    rel = f"features/{name}.h5"
    if shards == 1:
        return name, [Job(f"extract-{name}", "extract", ("extract", *args, "--out", str(file), "--quiet"), rel,
                          labels=labels)], file, labels
    parts = [Job(f"extract-{name}-{k}of{shards}", "extract",
                 ("extract", *args, "--out", str(file), "--shard", f"{k}/{shards}", "--quiet"),
                 str(shard_output_path(Path(rel), (k, shards))), labels=labels) for k in range(shards)]
    merge = Job(f"merge-{name}", "merge", ("merge", str(file), *(str(folder / j.output) for j in parts), "--quiet"),
                rel, tuple(j.id for j in parts), labels)
    return name, [*parts, merge], file, labels


def _check_readable(file: Path, at: str) -> None:
    if file.is_dir():
        raise UserError(f"{at}: `file` {file} is a folder; give a feature file (.h5)")
    try:
        with open(file, "rb"):
            pass
    except FileNotFoundError:
        raise UserError(f"{at}: `file` {file}: no such file") from None
    except OSError as exc:
        raise UserError(f"{at}: `file` {file} cannot be read ({exc.strerror})") from exc


def _check_extraction(here: Path, e: dict[str, Any], options: dict[str, Any], at: str) -> None:
    """What `probe extract` checks before it loads anything: the dataset and its options
    (by the dataset registry), its folder, the encoder's name and options (by the encoder
    registry), the batch size, workers and storage type."""
    from features.datasets import registry as datasets
    from features.encoders import registry as encoders
    from features.extract import check_settings

    where = f"{at} [features.options]"
    info = _checked(lambda: datasets.dataset_info(str(e["dataset"])), at)
    unknown = sorted(set(options) - set(datasets.options()) - set(encoders.OPTION_NAMES) - set(EXTRACT_KEYS))
    if unknown:
        allowed = [*(info.option_names if info.strict else datasets.options()), *encoders.OPTION_NAMES[1:],
                   *EXTRACT_KEYS]
        raise UserError(f"{where}: unknown key {unknown[0]!r}; use {', '.join(allowed)}")
    if info.strict:
        _checked(lambda: datasets.check_options(info, {k: v for k, v in options.items() if k in datasets.options()}),
                 where)
    if "root" in e and not _path(here, e["root"]).is_dir():
        raise UserError(f"{at}: `root` {_path(here, e['root'])}: no such folder")
    if "root" not in e and info.root == "required":
        raise UserError(f"{at}: dataset {info.name!r} needs `root`, its folder")
    typed = _checked(lambda: {k: _typed(k, v, EXTRACT_KINDS.get(k, str)) for k, v in options.items()
                              if k not in datasets.options() and k != "prompts"}, where)
    _checked(lambda: check_settings(typed.get("batch_size"), typed.get("workers"),
                                    typed.get("dtype", FEATURE_DTYPES[0])), where)
    family = _checked(lambda: encoders.find(str(e["encoder"])), at) if "encoder" in e else None
    for option in encoders.OPTION_NAMES:
        value = typed.get(option, e.get(option))
        if value is None:
            continue
        for check in {o.check for f in encoders.families() for o in f.options if o.name == option and o.check}:
            _checked(lambda check=check, value=value: check(value), where)
        if family is not None and option not in ("tower", *family.option_names):
            raise UserError(f"{where}: `{option}` does not apply to `encoder` {e['encoder']}; drop it")
    _checked(lambda: _check_device(str(typed.get("device", "auto"))), where)


def _checked(check: Any, where: str) -> Any:
    """``check()``, its UserError prefixed with where in the study file it arose (if given)."""
    try:
        return check()
    except UserError as exc:
        if not where:
            raise
        raise UserError(f"{where}: {exc}") from exc


def _groups(e: dict[str, Any], i: int, shared: dict[str, Any], where: str) -> list[tuple[str, list[str], list[str]]]:
    """(name, methods, `probe fit` flags) of one [[methods]] entry: one job, or one per
    method with ``split = true`` (named after the method)."""
    at = f"{where} [[methods]] #{i + 1}"
    raw = e.get("methods", e.get("method"))
    methods = [raw] if isinstance(raw, str) else list(raw or [])
    for m in methods:
        try:
            get_method(str(m))
        except UserError as exc:
            raise UserError(f"{at}: {exc}") from exc
    if not methods and "protocol" not in e and "protocol" not in shared:
        raise UserError(f"{at}: give `method` (or a list `methods`) or a `protocol`")
    own = {k: v for k, v in e.items() if k not in ("name", "method", "methods", "split")}
    _check_fit({**shared, **own}, at, [str(m) for m in methods])
    flags = [a for k, v in {**shared, **own}.items() for a in _flag(k, v)]
    if e.get("split", False) is True:
        if not methods:
            raise UserError(f"{at}: `split` needs the methods listed (`methods`)")
        return [(_name({"name": m}, m, at), [m], flags) for m in methods]
    default = "+".join(methods) or str(e.get("protocol", shared.get("protocol"))).replace(":", "-")  # a folder name
    return [(_name(e, default, at), methods, flags)]


def _fit_keys() -> list[str]:
    return [*all_params(), *(f.name for f in user_settings()), *all_options(), *FIT_EXTRAS, "seeds"]


def _check_fit(table: dict[str, Any], where: str, methods: list[str] | None = None) -> None:
    """Every key a `probe fit` flag, every value one the fit would take: grid values by
    their declarations' parsers, settings typed as their flags are and checked by
    :func:`probe.methods.checked_settings`, the protocol's name as `probe fit` parses it,
    as `probe fit` checks its flags (without loading torch: a study's launcher only reads
    and launches). With ``methods`` (a [[methods]] group's; none: the protocol's), each
    method's configurations are made as :func:`probe.pipeline.plan_fit` makes them, so
    that a grid the fit would refuse (an `anneal` not below `steps`) is refused here."""
    from probe.methods import checked_settings

    _only(table, _fit_keys(), where)
    params = all_params()
    kinds = {**{f.name: setting_kind(f) for f in user_settings()}, **{n: p.kind for n, (_, p) in all_options().items()},
             "allow_incomplete": bool}
    settings, grid = {}, {}
    try:
        for key, value in table.items():
            name = "seed" if key == "seeds" else key
            if name in params:
                grid[name] = params[name][0][1].parse(_text(value))
            elif key in kinds:
                settings[key] = _typed(key, value, kinds[key])
        settings.pop("allow_incomplete", None)
        _check_device(str(table.get("device", "auto")))
        check_dtype(str(table.get("dtype", "float32")))
        st = checked_settings(**settings)
        protocol = parse_name(str(table["protocol"]))[0] if "protocol" in table else None
        # With a protocol and no `steps`, the steps come from the file's training rows: the fit checks them.
        if methods is not None and (protocol is None or "steps" in table):
            for m in methods or (protocol.methods if protocol else ()):
                own = get_method(m).hyperparameters()
                get_method(m).configs({k: v for k, v in grid.items() if k in own}, st.steps, st.search, st.search_seed)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from exc


def _typed(key: str, value: Any, kind: type) -> Any:
    """A study value as its flag's parser would give it (the flag's text through its type)."""
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"`{key}` {value!r}: give true or false")
        return value
    try:
        return kind(_text(value))
    except ValueError:
        what = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
        raise UserError(f"`{key}` {value!r}: give {what}") from None


def _check_device(name: str) -> None:
    """The form of a device name (whether this machine has it is for the job's machine to say)."""
    import torch

    if name == "auto":
        return
    try:
        known = torch.device(name).type in ("cpu", "cuda")
    except RuntimeError:
        known = False
    if not known:
        raise UserError(f"`device` {name!r} is not a device; use auto, cpu, cuda or cuda:N")


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _flag(key: str, value: Any, repeated: tuple[str, ...] = (), switches: tuple[str, ...] = ()) -> list[str]:
    """The command-line form of one study value: a list of a ``repeated`` option as the flag
    once per item, a false ``switches`` one (a flag with no ``--no-`` form) left out."""
    flag = "--" + ("seed" if key == "seeds" else key).replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else [] if key in switches else [f"--no-{flag[2:]}"]
    if key in repeated and isinstance(value, list):
        return [a for item in value for a in (flag, _text(item))]
    return [flag, _text(value)]
