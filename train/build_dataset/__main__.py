"""``python -m train.build_dataset ...`` (and ``accelerate launch -m train.build_dataset ...``): see :mod:`.cli`."""

import sys

from train.build_dataset.cli import main

sys.exit(main())
