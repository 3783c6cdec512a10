"""``python -m hearproto``: the command line (what ``torchrun -m hearproto train`` runs)."""

import sys

from hearproto.cli import main

sys.exit(main())
