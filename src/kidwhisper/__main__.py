"""`python -m kidwhisper ...` (and `torchrun -m kidwhisper ...`) runs the CLI."""

import sys

from kidwhisper.cli.main import main

sys.exit(main())
