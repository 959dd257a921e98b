import sys

from instantportrait.cli.main import main

sys.exit(main())
