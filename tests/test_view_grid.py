"""`evaluate --view_grid`: one pass gives, for every sub-grid, what a separate evaluation at that
grid gives (sparse_tubes/view_grid.py)."""
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from sparse_tubes import multiview, view_grid
from sparse_tubes.data import sources
from sparse_tubes.train import sharding, state as state_lib


def test_positions_group_the_views_that_sample_the_same_place():
  p = view_grid.positions(4, True)
  # 1 view: the centre rounded down, alone; 2: the ends; 3: the ends and the middle; 4: thirds.
  assert len(p) == 6
  assert p.of(2) == [p.slot[(3, 0)], p.slot[(3, 2)]] == [p.slot[(4, 0)], p.slot[(4, 3)]]
  assert p.of(1) != [p.slot[(3, 1)]]
  assert len(set(p.of(4))) == 4
  seg = view_grid.positions(3, True, segment=True)  # (i + 0.5) / v: 1/2 is shared by 1 and 3 views
  assert len(seg) == 5 and seg.of(1) == [seg.slot[(3, 1)]]


@pytest.mark.parametrize('sampling,t,s', [('stride', 4, 3), ('segment', 3, 2)])
def test_view_grid_equals_separate_evaluations(make_config, sampling, t, s):
  # min_resize 35: the crops' free range is 3 pixels, where one centre crop (rounded down) and the
  # middle one of three (rounded) differ; 16 frames, 8 per clip: T=4 clips at 0, 3, 5, 8.
  config = make_config(eval_datasets=('shapes_video',), datasets__shapes_video__sampling=sampling,
                       datasets__shapes_video__eval_temporal_views=t,
                       datasets__shapes_video__eval_spatial_views=s,
                       datasets__shapes_video__min_resize=35)
  mesh, rules = sharding.mesh_and_rules(config)
  data_dir, infos = sources.dataset_infos(config)
  classes = sources.num_classes(config, infos)
  spec = state_lib.model_spec(config.model, classes, mesh, rules)
  params = state_lib.init_state(config.model, classes, spec, optax.identity(), mesh, 1)['params']
  # The head starts at zero (all logits 0): perturb every parameter so views score differently.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jax.device_put(
      np.asarray(x) + rng.normal(0, 0.2, x.shape).astype(x.dtype), x.sharding), params)
  ev = multiview.Evaluator(config, spec, mesh, rules, data_dir, infos)
  step, ds = ev.steps['shapes_video'], config.datasets.shapes_video

  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    grid, preds = view_grid.evaluate_grid(step, params, ds, data_dir=data_dir, mesh=mesh,
                                          rules=rules, name='shapes_video', gflops=2.0,
                                          with_predictions=True)
  assert [(r['temporal_views'], r['spatial_views']) for r in grid['grid']] == [
      (a, b) for a in range(1, t + 1) for b in range(1, s + 1)]
  for row in grid['grid']:
    a, b = row['temporal_views'], row['spatial_views']
    sub = ds.copy_and_resolve_references()
    sub.eval_temporal_views, sub.eval_spatial_views = a, b
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      ref, pred = multiview.evaluate_dataset(step, params, sub, data_dir=data_dir, mesh=mesh,
                                             rules=rules, num_videos=16, name='shapes_video',
                                             with_predictions=True)
    for key in ('top1', 'top5', 'view_top1', 'mean_class_accuracy', 'num_videos'):
      assert row[key] == ref[key], (a, b, key)
    np.testing.assert_array_equal(preds[(a, b)].index, pred.index)
    np.testing.assert_array_equal(preds[(a, b)].scores, pred.scores, err_msg=f'{a}x{b}')
    assert row['gflops_per_video'] == 2.0 * a * b
  # The sub-grids are not one another: the single centre view scores differently from the most.
  assert not np.allclose(preds[(1, 1)].scores, preds[(t, s)].scores)
  assert grid['views_run_per_video'] == (6 * 4 if sampling == 'stride' else 5 * 3)


def test_view_grid_refuses_whole_video_evaluation(make_config):
  config = make_config(datasets__shapes_video__eval_temporal_views=0)
  with pytest.raises(ValueError, match=r'eval_temporal_views=0 .* sub-grids'):
    view_grid.plan(config.datasets.shapes_video, name='shapes_video')
