"""The batched trainer: a whole grid of linear heads as one computation.

``settings`` (the fit's settings, declared once), ``data`` (splits, balanced
batches, the shared logits pass), ``plan`` (cohorts and memory-sized chunks of
heads), ``loop`` (the optimisation, checkpoints and result records), ``optim``
(Adam and SGD over stacked heads). Importing this package imports nothing heavy,
so `probe fit --help` can read the settings' declarations at once.
"""
