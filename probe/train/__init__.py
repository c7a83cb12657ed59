"""The trainer's machinery, which knows no method: a whole grid of linear heads as one computation.

``settings`` (the fit's settings, declared once), ``data`` (splits, balanced batches,
the shared logits pass), ``optim`` (Adam and SGD over stacked heads) and ``solver`` (the
full-batch L-BFGS). Methods (``probe.methods``) are written against these; where they
meet (chunks, the loop, the solver's chunks) is ``probe.fitting``. Importing this
package imports nothing heavy, so `probe fit --help` can read the settings' declarations
at once.
"""
