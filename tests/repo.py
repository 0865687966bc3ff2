"""Where the repository's files are, for tests in any folder."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')
LAUNCH = os.path.join(ROOT, 'launch')
