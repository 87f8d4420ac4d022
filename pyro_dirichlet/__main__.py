"""``python -m pyro_dirichlet`` runs the ``pyro-dirichlet`` command."""

from pyro_dirichlet.app.cli import console_main

console_main()
