"""A tiny TimeSformer on the built-in moving-shapes videos and images; the arg picks the attention
(TimeSformer §3, Table 1), `timesformer_tiny.py:attention=NAME`:

  divided       T+S, the paper's default (also with no arg)
  joint         joint space-time (ST)
  space         space-only (S): frames never see each other, so it stays near chance on the
                direction-of-motion task (the control of the attention study)
  local_global  sparse local-global (L+G): local windows of F x H/2 x W/2 tokens, then a global
                grid of stride 2 in (t, h, w)
  axial         T, then W, then H

  python -m sparse_tubes train --config=configs/synthetic/timesformer_tiny.py:attention=axial --workdir=/tmp/timesformer_axial_tiny
"""
from sparse_tubes import zoo

ATTENTIONS = ('divided', 'joint', 'space', 'local_global', 'axial')


def get_config(arg=None):
  attention = zoo.arg_choice(arg, 'attention', ATTENTIONS, 'divided', 'timesformer_tiny.py')
  c = zoo.synthetic(images=True)
  c.model.name = 'timesformer'
  # 2D 8x8 patches on every frame (TimeSformer §3) -> an 8x4x4 token grid; images use the same tube.
  c.model.tubes = (((1, 8, 8), (1, 8, 8), (0, 0, 0)),)
  c.model.image_tube = 0
  c.model.posemb = 'learned_space_time'   # learned space + learned time embeddings
  c.model.head = 'token'
  c.model.attention = attention
  return c
