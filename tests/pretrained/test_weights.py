"""What every checkpoint reader shares: flat '/' keys of a params tree and back (scanned layers
stacked and unstacked), the one mismatch error listing every problem, and reading weight files."""
import numpy as np
import pytest

from sparse_tubes.pretrained import weights

LIKE = {'embed': {'kernel': np.zeros((2, 3), np.float32)},
        'encoder': {'blocks': {'mlp': np.zeros((2, 4), np.float32)}},  # scanned: 2 layers
        'heads': [np.zeros(5, np.float32)]}


def test_flatten_names_dict_keys_and_list_indices():
  assert sorted(weights.flatten(LIKE)) == ['embed/kernel', 'encoder/blocks/mlp', 'heads/0']


def test_unflatten_stacks_per_layer_arrays_and_casts():
  flat = {'embed/kernel': np.ones((2, 3), np.float64), 'heads/0': np.arange(5),
          'encoder/blocks/0/mlp': np.full(4, 1.0), 'encoder/blocks/1/mlp': np.full(4, 2.0)}
  tree = weights.unflatten_like(LIKE, flat)
  assert tree['embed']['kernel'].dtype == np.float32 and tree['heads'][0].dtype == np.float32
  np.testing.assert_array_equal(tree['encoder']['blocks']['mlp'], [[1.0] * 4, [2.0] * 4])
  back = weights.unstack_scanned(weights.flatten(tree), num_layers=2)
  assert sorted(back) == sorted(flat)
  np.testing.assert_array_equal(back['encoder/blocks/1/mlp'], flat['encoder/blocks/1/mlp'])


def test_every_problem_is_listed_at_once():
  flat = {'embed/kernel': np.ones((3, 2)), 'encoder/blocks/mlp': np.ones((2, 4)),
          'extra/bias': np.ones(1)}
  with pytest.raises(weights.CheckpointMismatch) as e:
    weights.unflatten_like(LIKE, flat, what='ViT-B checkpoint')
  assert str(e.value).splitlines() == [
      'the ViT-B checkpoint does not fit:', '  missing keys (1): heads/0',
      '  unexpected keys (1): extra/bias',
      '  shape mismatch: embed/kernel is (3, 2), expected (2, 3)']
  assert (e.value.missing, e.value.unexpected) == (['heads/0'], ['extra/bias'])


def test_long_key_lists_are_cut_with_their_count():
  keys = [f'k{i:02d}' for i in range(weights.LISTED + 5)]
  msg = str(weights.CheckpointMismatch('x', missing=keys))
  assert f'missing keys ({weights.LISTED + 5}): k00, k01' in msg and msg.endswith(' ...')
  assert f'k{weights.LISTED:02d}' not in msg


def test_summarise_collapses_layers():
  keys = ['a/blocks/0/mlp', 'a/blocks/1/mlp', 'a/blocks/0/attn', 'b', 'c']
  assert weights.summarise(keys) == 'a/blocks/*/mlp, a/blocks/*/attn, b, c'
  assert weights.summarise(keys, limit=2) == 'a/blocks/*/mlp, a/blocks/*/attn ... (+2)'


def test_read_torch(tmp_path):
  torch = pytest.importorskip('torch')
  path = tmp_path / 'ckpt.pth'
  torch.save({'epoch': 3, 'model_state': {'w': torch.ones(2, dtype=torch.bfloat16),
                                          'step': torch.tensor(7)}}, path)
  sd = weights.read_torch(str(path))  # unwrapped from 'model_state'; bfloat16 read as float32
  assert sorted(sd) == ['step', 'w'] and sd['w'].dtype == np.float32 and sd['step'] == 7
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a pickle at all')
  with pytest.raises(ValueError, match='is not a PyTorch checkpoint of tensors'):
    weights.read_torch(str(junk))
  safetensors = pytest.importorskip('safetensors.numpy')
  safetensors.save_file({'a': np.arange(3, dtype=np.float32)}, str(tmp_path / 'x.safetensors'))
  np.testing.assert_array_equal(weights.read_torch(str(tmp_path / 'x.safetensors'))['a'], [0, 1, 2])
