"""``python -m asgilab backend.app:app --port 8001``."""

import sys

from asgilab.server import main

sys.exit(main())
