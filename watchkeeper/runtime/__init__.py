"""How flow runs execute: the warm executor (`executor`) and its process (`process`), the outbox
dispatcher that starts the runs the intake owes (`dispatcher`), run control (`control`: cancellation
that never lands between an action's claim and its answer), the intake's nudge that an outbox row
is owed (`nudges`) and this host's processes and ports (`host`).

`control`, `nudges` and `host` import nothing of Watchkeeper and sit at the bottom of the layers; the executor
and dispatcher sit beside `flows/`, importing the store and configuration; `process` serves
`deployments/`.
"""
