"""``python -m adaptflow.flows.cli``: the ``adaptflow`` command."""

import sys

from adaptflow.flows.cli.app import main

sys.exit(main())
