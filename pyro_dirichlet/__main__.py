"""``python -m pyro_dirichlet`` runs the ``pyro-dirichlet`` command."""

import sys

from pyro_dirichlet.app.cli import main

sys.exit(main())
