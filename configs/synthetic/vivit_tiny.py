"""A tiny ViViT on the built-in moving-shapes videos (label: direction of motion); the arg picks
the model (ViViT §3.3), `vivit_tiny.py:model=NAME`:

  m1  spatio-temporal attention over all tubelet tokens, class token (also with no arg)
  m2  factorised encoder: a spatial encoder per frame index, then a temporal encoder over the
      per-frame class tokens (L_t = 2 here, 4 in the paper)
  m3  factorised self-attention: spatial then temporal attention in each block, no class token
  m4  factorised dot-product attention: half the heads over space, half over time

  python -m sparse_tubes train --config=configs/synthetic/vivit_tiny.py:model=m3 --workdir=/tmp/vivit_m3_tiny
"""
from sparse_tubes import zoo

MODELS = {
    'm1': dict(head='token', attention='joint'),
    'm2': dict(head='token', attention='joint', encoder='factorised', spatial_pool='token',
               temporal_layers=2),
    'm3': dict(head='gap', attention='factorised_self_attention', factorised_order='space_time'),
    'm4': dict(head='gap', attention='factorised_dot_product'),
}


def get_config(arg=None):
  model = zoo.arg_choice(arg, 'model', MODELS, 'm1', 'vivit_tiny.py')
  c = zoo.synthetic(images=False)
  c.model.name = 'vivit'
  # Tubelet embedding (ViViT §3.2): 2x8x8 tubelets, stride = kernel -> a 4x4x4 token grid. Tubelets
  # span 2 frames, so there is no image path.
  c.model.tubes = (((2, 8, 8), (2, 8, 8), (0, 0, 0)),)
  c.model.image_tube = None
  c.model.posemb = 'learned'              # ViViT's joint learned embedding
  c.model.update(MODELS[model])
  return c
