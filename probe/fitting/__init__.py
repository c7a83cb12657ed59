"""Where methods meet the trainer's machinery.

``plan`` (cohorts and memory-sized chunks of heads, and which solver fits them),
``loop`` (the batched stochastic optimisation, checkpoints and result rows),
``fullbatch`` (the full-batch solver's chunks) and ``dispatch`` (one method's
configurations, whatever fits them).
"""
