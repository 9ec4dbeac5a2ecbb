"""What a model costs without running it: the closed-form multiply-adds by attention pattern (checked
by hand here, against XLA's count at ViT-B width), class tokens, training FLOPs and activations."""
import os

import ml_collections
import pytest

from sparse_tubes import config as config_lib
from sparse_tubes.data import sources
from sparse_tubes.models import costs, video_vit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, 'configs', 'synthetic', 'tubevit_tiny.py')
VIDEO = (4, 16, 16, 3)
D, M, L = 16, 32, 2


def cfg(**kw):
  """TimeSformer-style: 4x16x16 clips, 1x8x8 patches -> 16 tokens on a 4x2x2 grid, class token."""
  c = ml_collections.ConfigDict(dict(
      name='timesformer', hidden_size=D, num_layers=L, num_heads=2, mlp_dim=M,
      tubes=(((1, 8, 8), (1, 8, 8), (0, 0, 0)),), image_tube=0, input_shape=VIDEO))
  c.update(kw)
  return c


def attention_and_mlp(tokens, groups, length):
  """One block's multiply-adds: q, k, v, out projections; QK^T and AV; the MLP."""
  return 4 * D * D * tokens + 2 * groups * length * length * D + 2 * D * M * tokens


TOKENIZER = 16 * (8 * 8) * 3 * D  # 16 tokens, a 1x8x8x3 kernel each, D outputs


@pytest.mark.parametrize('attention,encoder', [
    ('joint', L * attention_and_mlp(17, 1, 17)),
    # divided: time over each of the 4 places (4 frames, no class token, + a linear layer), then
    # space in each of the 4 frames (4 patches + the class token), then the MLP over 17 tokens.
    ('divided', L * (4 * D * D * 16 + 2 * 4 * 4 * 4 * D + D * D * 16
                     + 4 * D * D * 20 + 2 * 4 * 5 * 5 * D + 2 * D * M * 17)),
    # space: one class token per frame, attending within its frame.
    ('space', L * attention_and_mlp(20, 4, 5)),
])
def test_analytic_macs_by_hand(attention, encoder):
  macs = costs.analytic_macs(cfg(attention=attention), VIDEO, classes=5)
  assert macs == {'total': float(TOKENIZER + encoder + D * 5), 'tokenizer': float(TOKENIZER),
                  'encoder': float(encoder), 'pool': 0.0, 'classifier': float(D * 5)}


@pytest.mark.parametrize('kw,shape,n', [
    ({'attention': 'joint'}, VIDEO, 1), ({'attention': 'space'}, VIDEO, 4),
    ({'attention': 'space'}, (16, 16, 3), 1),  # an image is one frame
    ({'attention': 'joint', 'head': 'gap'}, VIDEO, 0)])
def test_class_tokens(kw, shape, n):
  assert costs.class_tokens(cfg(**kw), shape) == n


def test_train_flops_are_three_forwards_per_example_of_every_batch():
  config = config_lib.load(TINY)
  classes = sources.num_classes(config)
  expected = sum(3 * 2 * costs.analytic_macs(config.model, costs.input_shape(ds),
                                              classes[n])['total'] * ds.batch_size
                 for n, ds in config.datasets.items())
  assert costs.train_flops(config, classes) == expected > 0
  ds = config.datasets.shapes_video
  assert costs.example_train_flops(config.model, ds, classes['shapes_video']) * ds.batch_size < (
      expected)  # the image dataset's batch is in the total too
  assert costs.views(ds) == (2, 3) and costs.views(config.datasets.shapes_image)[0] == 1


def test_param_counts_by_module_and_head():
  graphdef, state = video_vit.abstract_model(cfg(attention='joint'), {'a': 5, 'b': 7})
  p = costs.param_counts(state)
  assert p['heads'] == {'a': D * 5 + 5, 'b': D * 7 + 7}
  assert p['total'] == sum(p['by_module'].values()) and p['by_module']['heads'] == D * 12 + 12


def test_xla_flops_agree_with_the_analytic_count_at_vit_b_width():
  """At ViT-B width matmuls dominate: XLA/2 and the closed form agree within 3%."""
  config = config_lib.load(TINY, model__hidden_size=768, model__num_heads=12, model__mlp_dim=3072,
                           model__num_layers=2)
  classes = sources.num_classes(config)
  graphdef, state = video_vit.abstract_model(config.model, classes)
  shape = config_lib.input_shape(config.datasets.shapes_video)
  xla = costs.xla_macs(graphdef, state, shape, 'shapes_video')
  analytic = costs.analytic_macs(config.model, shape, classes['shapes_video'])['total']
  assert analytic <= xla <= 1.03 * analytic


def test_activations_follow_dtype_and_remat():
  base = config_lib.load(TINY)
  classes = sources.num_classes(base)
  shape = config_lib.input_shape(base.datasets.shapes_video)

  def act(**kw):
    config = config_lib.load(TINY, **kw)
    graphdef, state = video_vit.abstract_model(config.model, classes)
    return costs.activation_bytes(graphdef, state, shape, 'shapes_video')

  f32, bf16, remat = act(), act(model__dtype='bfloat16'), act(model__remat=True)
  assert bf16 < 0.75 * f32   # most saved tensors are half as wide
  assert remat < 0.5 * f32   # only each block's input is kept
