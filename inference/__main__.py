import sys

from inference.entrypoints.cli import main

sys.exit(main())
