import sys

from palaver.cli import main

sys.exit(main())
