"""``python -m sealwire.settings``: the settings reference tables (:mod:`.reference`)."""

import sys

from .reference import main

sys.exit(main())
