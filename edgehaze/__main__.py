import sys

from edgehaze.cli import main

sys.exit(main())
