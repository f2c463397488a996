"""``python -m kubetune_trainer train --config FILE`` (also what torchrun runs: ``-m kubetune_trainer``)."""

import sys

from kubetune_trainer.cli import main

sys.exit(main())
