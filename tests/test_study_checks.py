"""The study file is checked as the commands it launches check their flags, when it is read:
its Slurm resources, its `probe extract` options as extract takes them, its fits as
`probe fit` plans them, and one folder per job. And sbatch refusing a study's jobs is one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from base.errors import UserError
from probe.study.spec import load_study
from tests.h5craft import write_feature_file

FEATURES = '[[features]]\nname = "a"\nfile = "a.h5"\n'
ERM = '[[methods]]\nmethod = "erm"\n'


def _toml(folder: Path, text: str) -> Path:
    write_feature_file(folder / "a.h5")
    path = folder / "s.toml"
    path.write_text(text)
    return path


def _refused(toml: Path, *fragments: str) -> str:
    with pytest.raises(UserError) as exc:
        load_study(toml)
    message = str(exc.value)
    assert "\n" not in message and str(toml) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(("value", "fragment"), [
    ('time = "2h"', "`time` '2h'"),
    ("time = inf", "`time` inf"),
    ("time = 90.5", "`time` 90.5"),
    ("time = 0", "`time` 0"),
    ("cpus = true", "`cpus` True"),
    ("gpus = -1", "`gpus` -1"),
    ("parallelism = 0", "`parallelism` 0"),
    ('mem = "lots"', "`mem` 'lots'"),
    ('partition = "gpu typo"', "`partition` 'gpu typo'"),
    ("partition = 3", "`partition` 3"),
])
def test_slurm_values_are_checked_when_the_study_is_read(tmp_path: Path, value: str, fragment: str) -> None:
    _refused(_toml(tmp_path, f"{FEATURES}{ERM}[slurm]\n{value}\n"), "[slurm]", fragment)


def test_good_slurm_values_become_submitit_parameters(tmp_path: Path) -> None:
    from probe.study.launch import executor_parameters

    study = load_study(_toml(tmp_path, f'{FEATURES}{ERM}[slurm]\ntime = 120\ngpus = 0\ncpus = 4\nmem = "500M"\n'
                                       'partition = "gpu,a100"\nparallelism = 2\n'))
    assert executor_parameters(study.slurm, "x") == {
        "name": "x", "nodes": 1, "tasks_per_node": 1, "timeout_min": 120, "gpus_per_node": 0, "cpus_per_task": 4,
        "mem_gb": 1, "slurm_partition": "gpu,a100", "slurm_array_parallelism": 2}
    with pytest.raises(UserError, match=r"^`time` 0: give a whole number of minutes"):  # the flags are checked too
        executor_parameters({**study.slurm, "time": 0}, "x")


def test_sbatch_refusing_the_jobs_is_one_line_with_its_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from probe.study.launch import launch_slurm

    bin_dir = tmp_path / "bin"  # Slurm's commands, sbatch refusing the partition as a real one does
    bin_dir.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", 'echo "sbatch: error: invalid partition specified: gpu-typo" '
                                                      '>&2\necho "sbatch: error: Batch job submission failed" >&2\n'
                                                      "exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    study = load_study(_toml(tmp_path, f'{FEATURES}{ERM}[slurm]\npartition = "gpu-typo"\n'))
    with pytest.raises(UserError) as exc:
        launch_slurm(study, {})
    message = str(exc.value)
    assert "\n" not in message and "invalid partition specified: gpu-typo" in message, message
    assert str(study.path) in message and "`partition`" in message
    assert "sbatch" not in capsys.readouterr().err  # said once, in the error


def test_extract_options_reach_extract_as_it_takes_them(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    toml = _toml(tmp_path, '[[features]]\nname = "wb"\ndataset = "waterbirds"\nroot = "data"\n'
                           'encoder = "open_clip:ViT-B-32"\n[features.options]\n'
                           'prompts = ["a photo of a {}.", "a blurry photo of a {}."]\nskip_bad = false\n'
                           f"{ERM}")
    argv = load_study(toml).jobs[0].argv
    assert argv.count("--prompts") == 2, argv  # one template each, not one joined with a comma
    i = argv.index("--prompts")
    assert argv[i + 1:i + 4] == ("a photo of a {}.", "--prompts", "a blurry photo of a {}.")
    assert not any("skip-bad" in a for a in argv), argv  # false is extract's default, and it has no --no-skip-bad
    toml.write_text(toml.read_text().replace("skip_bad = false", "skip_bad = true"))
    assert "--skip-bad" in load_study(toml).jobs[0].argv


def test_extract_option_forms_match_the_extract_command() -> None:
    """What spec.py declares of `probe extract`'s flags (it may not import the CLI) is what they are."""
    import typer

    from cli.main import app
    from probe.study.spec import EXTRACT_KEYS, EXTRACT_REPEATED, EXTRACT_SWITCHES

    params = {p.name: p for p in typer.main.get_command(app).commands["extract"].params}
    for key in EXTRACT_KEYS:
        assert key in params, key
        assert params[key].multiple == (key in EXTRACT_REPEATED), key
        no_form = any(o.startswith("--no-") for o in params[key].secondary_opts)
        assert (getattr(params[key], "is_flag", False) and not no_form) == (key in EXTRACT_SWITCHES), key


def test_protocol_is_parsed_as_fit_parses_it(tmp_path: Path) -> None:
    toml = _toml(tmp_path, f'{FEATURES}[[methods]]\nprotocol = "cma-paper:waterbirds"\n')
    study = load_study(toml)
    assert study.jobs[0].id == "fit-a-cma-paper-waterbirds"
    assert "cma-paper:waterbirds" in study.jobs[0].argv
    toml.write_text(f'{FEATURES}[[methods]]\nprotocol = "cma-paper:imagenet"\n')
    _refused(toml, "[[methods]] #1", "cma-paper", "'imagenet'")
    toml.write_text(f'{FEATURES}[[methods]]\nprotocol = "cma-papr"\n')
    _refused(toml, "[[methods]] #1", "'cma-papr' is unknown")


def test_a_grid_the_fit_would_refuse_is_refused_when_read(tmp_path: Path) -> None:
    toml = _toml(tmp_path, f'[fit]\nsteps = 10\n{FEATURES}[[methods]]\nmethod = "cma"\nanneal = [50]\n')
    _refused(toml, "[[methods]] #1", "`anneal` 50", "`steps` 10")
    toml.write_text(f'[fit]\nsteps = 100\n{FEATURES}[[methods]]\nmethod = "cma"\nanneal = [50]\n')
    load_study(toml)
    # with a protocol's methods, given steps: its annealed methods are checked against them
    toml.write_text(f'{FEATURES}[[methods]]\nprotocol = "cma-paper"\nsteps = 10\nanneal = [50]\n')
    _refused(toml, "[[methods]] #1", "`anneal` 50")


def test_two_jobs_of_one_id_are_refused(tmp_path: Path) -> None:
    write_feature_file(tmp_path / "b.h5")
    toml = _toml(tmp_path, '[[features]]\nname = "wb-clip"\nfile = "a.h5"\n[[features]]\nname = "wb"\nfile = "b.h5"\n'
                           '[[methods]]\nmethod = "erm"\n[[methods]]\nname = "clip-erm"\nmethod = "erm"\n')
    _refused(toml, "'fit-wb-clip-erm'", "[[features]] 'wb-clip' × [[methods]] 'erm'",
             "[[features]] 'wb' × [[methods]] 'clip-erm'", "`name`")
