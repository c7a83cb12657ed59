"""The typed records every layer of stage 2 passes: hyperparameter declarations
(``grid``), per-head metrics (``metrics``), the result row (``results``), the run's
summary with the one rule over seeds (``summary``) and a feature file with the fit's
domains (``fitset``)."""
