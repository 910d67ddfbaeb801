import sys

from lntune.cli import main

sys.exit(main())
