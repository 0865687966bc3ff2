from unet_jax.schedules import parse_schedule
from unet_jax.sweep.grid import expand, group_bundles


def _axes(**over):
  axes = dict(seed=(0,), learning_rate=(1e-3,), weight_decay=(0.0,), steps=(10,),
              batch_size=(8,), frozen_norm=('inference',), fold=(None,), layer_decay=(),
              l2sp=())
  axes.update(over)
  return axes


BASES = [('full', parse_schedule('full', 2), 'pretrained', {}),
         ('head', parse_schedule('head', 2), 'pretrained', {})]


def test_names_carry_only_varying_axes():
  runs = expand(BASES, _axes(seed=(0, 1), learning_rate=(1e-3, 3e-4)))
  assert len(runs) == 8
  assert [r.name for r in runs[:4]] == ['full-seed0-lr0.001', 'full-seed0-lr0.0003',
                                        'full-seed1-lr0.001', 'full-seed1-lr0.0003']
  assert expand(BASES, _axes())[1].name == 'head'


def test_data_axes_share_a_bundle():
  bundles, split_by = group_bundles(expand(BASES, _axes(seed=(0, 1, 2),
                                                        weight_decay=(0.0, 1e-4))))
  assert len(bundles) == 1 and len(bundles[0]) == 12 and split_by == []


def test_shape_axes_split_bundles_and_say_so():
  bundles, split_by = group_bundles(expand(BASES, _axes(steps=(10, 20), batch_size=(4, 8))))
  assert len(bundles) == 4 and split_by == ['steps', 'batch_size']
  for b in bundles:
    assert len({(r.steps, r.batch_size) for r in b}) == 1


def test_max_bundle_caps_size():
  bundles, _ = group_bundles(expand(BASES, _axes(seed=(0, 1, 2))), max_size=4)
  assert [len(b) for b in bundles] == [4, 2]


def test_variant_leaves_out_the_replicate_axes():
  runs = expand(BASES, _axes(seed=(0, 1), fold=(0, 1, 2), frozen_norm=('inference', 'adapt')))
  assert len(runs) == 2 * 2 * 3 * 2
  run = runs[0]
  assert run.name == 'full-seed0-norminference-fold0'
  assert run.variant == '-norminference'  # seeds and folds are replicates, not variants
  assert {r.variant for r in runs} == {'-norminference', '-normadapt'}
  assert {(r.fold, r.frozen_norm) for r in runs if r.base == 'head'} == {
      (f, p) for f in range(3) for p in ('inference', 'adapt')}
  bundles, split_by = group_bundles(runs)
  assert len(bundles) == 1 and split_by == []  # policies and folds share a program
