"""What arrives, checked before anything is written: the limits every JSON body keeps (`bodies`),
the prediction, feedback and pipeline-run records (`records`), and each record's checks against
its model's reference profile (`checks`).

Pure validation: imports only `config` and `times`. The store's writers and the service take its
validated records; later work on what arrives (per-record aggregates, the client for model
services) lands here.
"""
