import sys

from standing.cli import main

sys.exit(main())
