import sys

from pcamlab.cli.main import main

sys.exit(main())
