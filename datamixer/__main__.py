import sys

from datamixer.cli import main

sys.exit(main())
