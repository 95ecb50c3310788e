import sys

from litejobs._cli import main

sys.exit(main())
