"""Where the repository's files are, and config fields set by dotted name, for tests in any
folder."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')
LAUNCH = os.path.join(ROOT, 'launch')


def set_fields(config, fields: dict):
  """Sets ``{'finetune.steps': 2, ...}`` on an ml_collections config; returns it."""
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
