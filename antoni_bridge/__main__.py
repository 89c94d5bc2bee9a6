"""`python -m antoni_bridge ...`, the same as the `antoni-bridge` command (and what `accelerate launch -m`
starts: `accelerate launch --multi_gpu --num_processes 4 -m antoni_bridge train --config F.yaml`)."""

import sys

from antoni_bridge.cli import main

sys.exit(main())
