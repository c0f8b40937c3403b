"""bc-testbed as a Chaos Toolkit extension: an experiment runs against a testbed environment
(real servers, the WAN proxy, the pipeline, the scenario clock) and judges it with the same
reference model and checks as a scenario file.

- `control`: brings the environment up before the experiment and always takes it down
  after, whatever happened (declare it under `controls`).
- `actions`: WAN faults, process and server faults, the operator's procedures, `wait` and
  `settle`, each a step of a scenario, applied now and recorded in the run's history.
- `probes`: the pipeline's figures, and the verdict so far: `loss_as_predicted` (tolerance
  `true`) or `unexplained_loss` (tolerance `0`) make "no unexplained loss" a steady-state
  hypothesis.
- `environment`: the running environment that every activity reaches.

Needs the `chaostoolkit` package (the `dev` extra installs it).
"""
