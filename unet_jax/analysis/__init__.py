"""Reading and judging results, without JAX: tables, run-aware tests, findings, the report.

- ``loading``: ``load(workdir)`` and ``from_frame(df)`` make a :class:`Results`;
- ``results``: the :class:`Results` tables (summary, paired, pairwise, ranks, curves);
- ``paired``: :class:`PairedTest`, a run-aware paired comparison;
- ``stats``: crossed seeds x images estimates, Holm, ranks, bootstrap;
- ``findings``: the paper's findings F1-F6 judged on a Results;
- ``race``: ``race(df, delta=...)``, a Kim-Nelson race: what is decided, what to run next;
- ``report``, ``plots``: report.md and its figures.

Example::

  from unet_jax import analysis
  res = analysis.load('runs/default')
  res.paired('contracting', 'expanding').favours()
"""

from unet_jax.analysis.loading import from_frame, load
from unet_jax.analysis.paired import PairedTest
from unet_jax.analysis.race import RaceRecord, race
from unet_jax.analysis.results import Results

__all__ = ['PairedTest', 'RaceRecord', 'Results', 'from_frame', 'load', 'race']
