"""The run-directory application: the `pyro-dirichlet` command, its configuration, steps and report."""
