"""config.init_from and config.freeze through `train`: picked up from the config alone."""
import jax
import numpy as np
import pytest

from sparse_tubes import defaults
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes.pretrained import inflate, init as init_lib, vit, weights
from sparse_tubes.commands import train as train_cmd
import vit_helpers as H


def test_defaults_change_nothing_and_typos_fail():
  c = defaults.base()
  assert c.init_from.kind == '' and c.init_from.tubes_from == ''
  assert tuple(c.freeze.patterns) == () and c.freeze.layers_before == 0
  params = {'a': np.ones(2)}
  assert init_lib.initial_params(c, params)[0] is params
  bad = defaults.base()
  bad.init_from = dict(kind='vit_npz', path='x.npz', tube_int='average')
  with pytest.raises(ValueError, match=r'config\.init_from\.tube_int'):
    init_lib.validate(bad)
  bad = defaults.base()
  bad.init_from.kind = 'vit_npz'
  with pytest.raises(ValueError, match=r'needs config\.init_from\.path'):
    init_lib.validate(bad)


def tiny_npz(tmp_path, make_config) -> str:
  """An image ViT npz that fits the tiny TubeViT of the test config (hidden 24, 2 heads)."""
  c = make_config().model
  canon, _ = H.random_image_vit(seed=5, hidden_size=c.hidden_size, num_layers=c.num_layers,
                                num_heads=c.num_heads, mlp_dim=c.mlp_dim)
  return vit.save_npz(canon, str(tmp_path / 'image_vit.npz'))


def test_train_inflates_from_npz_and_freezes(tmp_path, make_config, capsys):
  npz = tiny_npz(tmp_path, make_config)
  config = make_config(total_steps=3, checkpoint_every_steps=3)
  config.init_from.kind = 'vit_npz'
  config.init_from.path = npz
  config.freeze.patterns = ('^tokenizer/convs/3/',)
  config.freeze.layers_before = 1
  workdir = str(tmp_path / 'run')
  train_cmd.train(config, workdir)
  out = capsys.readouterr().out
  assert 'init_from vit_npz' in out and 'parameter arrays from the image ViT' in out
  assert 'Frozen (config.freeze): 18 parameter arrays' in out
  assert 'encoder/blocks/0 (16 arrays), tokenizer/convs/3/bias, tokenizer/convs/3/kernel' in out

  after = weights.flatten(ckpt_lib.read_params(workdir))
  # What the inflation gives for the same model, from scratch.
  from flax import nnx
  from sparse_tubes.models import video_vit
  fresh = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(video_vit.build_model(
      config.model, {'shapes_image': 3, 'shapes_video': 8}, rngs=nnx.Rngs(params=0)), nnx.Param)))
  want = weights.flatten(inflate.inflate(vit.load(npz), fresh, config.model, config.init_from)[0])
  for k in ('tokenizer/convs/3/kernel', 'encoder/blocks/0/attention/query', 'encoder/blocks/0/norm1/scale'):
    np.testing.assert_array_equal(after[k], want[k])          # frozen: still the image ViT's
  for k in ('encoder/blocks/1/attention/query', 'tokenizer/convs/0/kernel'):
    assert np.abs(after[k] - want[k]).max() > 0                # trained

  # kind='checkpoint': that run's params into a fresh model; heads only with keep_heads.
  config2 = make_config()
  config2.init_from.kind = 'checkpoint'
  config2.init_from.path = workdir
  got, report = init_lib.initial_params(config2, fresh)
  got = weights.flatten(got)
  assert any('from the checkpoint' in r for r in report)
  for k in after:
    if k.startswith('heads/'):
      np.testing.assert_array_equal(got[k], 0)
    else:
      np.testing.assert_array_equal(got[k], after[k])


def test_checkpoint_merge_across_head_changes():
  src = {'w': np.ones((2, 3)), 'heads': {'a': {'kernel': np.ones((2, 5))}}}
  dst = {'w': np.zeros((2, 3)), 'heads': {'a': {'kernel': np.zeros((2, 3))}},
         'gates': {'alpha': np.zeros(2)}}
  got, report = init_lib.merge_checkpoint(src, dst)
  np.testing.assert_array_equal(got['w'], 1)
  np.testing.assert_array_equal(got['heads']['a']['kernel'], 0)
  assert any('gates/alpha' in r for r in report)
  with pytest.raises(weights.CheckpointMismatch, match=r'heads/a/kernel is \(2, 5\), expected \(2, 3\)'):
    init_lib.merge_checkpoint(src, dst, keep_heads=True)
  with pytest.raises(weights.CheckpointMismatch, match=r'w is \(2, 3\), expected \(3, 3\)'):
    init_lib.merge_checkpoint(src, {'w': np.zeros((3, 3))})
