"""``python -m qwen3_custom_mask.cli`` = ``qwen3-mask``."""

import sys

from . import main

sys.exit(main())
