"""python -m benchmark --methods ipnet,instructpix2pix --images portraits/ --out results/ (see benchmark/cli.py)."""

import sys

from benchmark.cli import main

sys.exit(main())
