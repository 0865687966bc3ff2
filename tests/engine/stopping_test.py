"""The early-stopping rule on its own: improvements, patience, stages, reasons, resume."""

import math

import numpy as np
import pytest

from unet_jax.engine.stopping import StopRule, StopTracker

NO = [False]


def _replay(rule, values, last_stage=0, chunk=10, diverged_at=None):
  tracker = StopTracker(rule, [last_stage])
  for k, value in enumerate(values):
    step = (k + 1) * chunk
    tracker.update(step, [value], [diverged_at is not None and step >= diverged_at])
    if not tracker.active[0]:
      break
  tracker.finish(len(values) * chunk, True)
  return tracker.runs[0]


def test_stops_after_patience_evaluations_without_improvement():
  run = _replay(StopRule(patience=2), [0.5, 0.6, 0.55, 0.6, 0.7])
  # 0.6 at step 20 is the best; 0.55 and 0.6 (not above 0.6) use up the patience.
  assert (run.best_step, run.best_val_dice, run.stopped_at, run.reason) == (20, 0.6, 40,
                                                                            'converged')


def test_min_delta_decides_what_counts_as_an_improvement():
  values = [0.5, 0.504, 0.508, 0.512]
  assert _replay(StopRule(patience=2), values).best_step == 40
  strict = _replay(StopRule(patience=2, min_delta=0.01), values)
  assert (strict.best_step, strict.stopped_at, strict.reason) == (10, 30, 'converged')


def test_a_run_still_improving_at_the_cap_is_marked_cap():
  run = _replay(StopRule(patience=2), [0.1, 0.2, 0.3])
  assert (run.best_step, run.stopped_at, run.reason) == (30, 30, 'cap')


def test_patience_zero_trains_to_the_cap_and_keeps_the_best():
  run = _replay(StopRule(patience=0), [0.3, 0.9, 0.2, 0.1, 0.1])
  assert (run.best_step, run.stopped_at, run.reason) == (20, 50, 'cap')


def test_patience_counts_only_in_the_last_stage():
  values = [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]
  assert _replay(StopRule(patience=2), values).stopped_at == 30
  # The last stage starts at step 40: the evaluations at 20..40 do not count.
  late = _replay(StopRule(patience=2), values, last_stage=40)
  assert (late.best_step, late.stopped_at, late.reason) == (10, 60, 'converged')


def test_divergence_stops_the_run_and_keeps_its_best():
  run = _replay(StopRule(patience=5), [0.4, 0.6, 0.5, 0.5], diverged_at=25)
  assert (run.best_step, run.stopped_at, run.reason) == (20, 30, 'diverged')


def test_without_validation_nothing_is_decided():
  tracker = StopTracker(StopRule(patience=1), [0, 0])
  for step in (10, 20, 30):
    improved, stopped = tracker.update(step, [math.nan, math.nan], [False, False])
    assert not improved.any() and not stopped.any()
  tracker.finish(30, False)
  assert [r.reason for r in tracker.runs] == ['no_validation'] * 2
  assert [r.best_step for r in tracker.runs] == [0, 0]


def test_stopped_runs_are_left_alone_while_others_go_on():
  tracker = StopTracker(StopRule(patience=1), [0, 0])
  tracker.update(10, [0.5, 0.5], [False, False])
  improved, stopped = tracker.update(20, [0.4, 0.6], [False, False])
  assert list(improved) == [False, True] and list(stopped) == [True, False]
  improved, stopped = tracker.update(30, [0.9, 0.7], [False, False])
  assert list(improved) == [False, True] and not stopped.any()
  assert tracker.runs[0].best_val_dice == 0.5 and list(tracker.active) == [False, True]


@pytest.mark.parametrize('cut', [1, 2, 3])
def test_json_round_trip_decides_as_a_straight_run(cut):
  """A resumed bundle rebuilds its tracker from the checkpoint's JSON."""
  values = np.asarray([[0.2, 0.5], [0.3, 0.4], [0.3, 0.45], [0.1, 0.45], [0.5, 0.6]])
  rule = StopRule(patience=2, min_delta=0.01)
  straight = StopTracker(rule, [0, 0])
  for k, row in enumerate(values):
    straight.update(10 * (k + 1), row, NO * 2)
  resumed = StopTracker(rule, [0, 0])
  for k, row in enumerate(values[:cut]):
    resumed.update(10 * (k + 1), row, NO * 2)
  resumed = StopTracker.from_json(rule, [0, 0], resumed.to_json())
  for k, row in enumerate(values[cut:], start=cut):
    resumed.update(10 * (k + 1), row, NO * 2)
  assert resumed.to_json() == straight.to_json()
