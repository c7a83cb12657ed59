"""Studies: feature files × method groups as ordinary resumable `probe` jobs, run by a launcher.

* ``spec``: the study file (TOML) and its expansion into jobs
* ``jobs``: the study folder (index, one folder per job, states, locks) and running one job
* ``launch``: the ``local`` and ``slurm`` (submitit) launchers
* ``reproduce``: `probe reproduce`, the CMA paper's table from the datasets' folders
"""
