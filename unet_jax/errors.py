"""The one exception a user's mistake raises; the launcher turns it into exit 2."""


class UserError(Exception):
  """A problem in the user's config, data or environment, with the fix in its text."""
