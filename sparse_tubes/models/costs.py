"""What a model costs, from abstract shapes only: parameters, tokens, FLOPs and activations.

Nothing is allocated or compiled (`nnx.eval_shape`, `jax.ShapeDtypeStruct`): a ViT-H video model is
described in seconds on a laptop CPU. `info` prints these numbers; `plan`, `bench` and the
throughput benchmark take their FLOPs from `train_flops`, the one formula for a training step:

  forward FLOPs   2 x the multiply-adds of `analytic_macs` (matmuls, the tube/patch projections and
                  attention, counted in closed form: what fvcore-style counters give)
  train FLOPs     3 x forward per example (the backward pass costs two forwards: the gradients
                  w.r.t. activations and w.r.t. weights), summed over every dataset's batch

Counting analytically keeps the figure the same for every attention kernel (XLA cannot see inside
cuDNN or Pallas calls), dtype, remat policy and backend.
"""
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_tubes import config as config_lib
from sparse_tubes import validation
from sparse_tubes.data import sources
from sparse_tubes.models import tokenizers, video_vit

FLOPS_CONVENTION = ('GFLOPs count one multiply-add as one FLOP (the papers\' convention); XLA cost '
                    'analysis of the lowered forward, divided by 2.')
ACTIVATION_NOTE = ('tensors autodiff saves for the backward pass of one example (training), at the '
                   'config\'s dtype and remat policy; parameters and input excluded; before XLA '
                   'fusion.')


# ------------------------------------------------------------------------------------------------
# Inputs

def input_shape(ds_cfg) -> tuple[int, ...]:
  return config_lib.input_shape(ds_cfg)


def views(ds_cfg) -> tuple[int, int]:
  return ((int(ds_cfg.eval_temporal_views) if ds_cfg.kind == 'video' else 1),
          int(ds_cfg.eval_spatial_views))


def _self_consistent_devices(config) -> int:
  """The device count the config's own mesh asks for (-1 axes count as 1)."""
  return math.prod(max(int(config.mesh[a]), 1) for a in ('data', 'fsdp', 'tensor'))


def _flat_model_cfg(model_cfg, **overrides):
  cfg = model_cfg.copy_and_resolve_references()
  with cfg.unlocked():
    for k, v in overrides.items():
      if k in cfg:
        cfg[k] = v
  return cfg


# ------------------------------------------------------------------------------------------------
# Parameters

def _size(tree) -> int:
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def param_counts(abstract_state) -> dict:
  """{'total', 'by_module': {top-level name: n}, 'heads': {dataset: n}}."""
  pure = nnx.to_pure_dict(abstract_state)
  by_module = {k: _size(v) for k, v in pure.items()}
  heads = {k: _size(v) for k, v in pure.get('heads', {}).items()}
  return dict(total=_size(pure), by_module=by_module, heads=heads)


# ------------------------------------------------------------------------------------------------
# Tokens

def model_option(model_cfg, key: str):
  """config.model[key], completed with defaults.model() and the name's defaults."""
  return config_lib.model_config(model_cfg)[key]


def class_tokens(model_cfg, shape) -> int:
  """Class tokens the model adds to the patch tokens of one input: one with head='token'
  (ViViT M1, TimeSformer), one per frame for TimeSformer's space-only model; ViViT M2 has one per
  frame in its spatial encoder (spatial_pool='token') plus one in its temporal encoder."""
  head = model_option(model_cfg, 'head')
  nt = _grid(model_cfg, shape)[0] if len(shape) == 4 else 1
  if model_option(model_cfg, 'encoder') == 'factorised':
    spatial = nt if model_option(model_cfg, 'spatial_pool') == 'token' else 0
    return spatial + (1 if head == 'token' else 0)
  if head != 'token':
    return 0
  return nt if model_option(model_cfg, 'attention') == 'space' and len(shape) == 4 else 1


def token_counts(model_cfg, shape) -> dict:
  """Tokens of one input: per tube, total, and the class tokens the model adds on top."""
  counts = tokenizers.count_tokens(model_cfg, shape)
  return dict(input_shape=list(shape), per_tube=counts['per_tube'], total=counts['total'],
              class_tokens=class_tokens(model_cfg, shape))


# ------------------------------------------------------------------------------------------------
# FLOPs and activations, from the lowered forward

def _forward(graphdef, dataset: str):
  def f(state, x):
    return nnx.merge(graphdef, state)(x, dataset=dataset)
  return f


def _cost(lowered) -> dict:
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  return dict(cost or {})


def xla_macs(graphdef, state, shape, dataset: str, dtype=jnp.float32) -> float:
  """Multiply-adds of one forward pass of one example (XLA 'flops' / 2), from the lowered HLO."""
  x = jax.ShapeDtypeStruct((1, *shape), dtype)
  lowered = jax.jit(_forward(graphdef, dataset)).lower(state, x)
  return float(_cost(lowered).get('flops', float('nan'))) / 2


def _residual_bytes(graphdef, state, shape, dataset: str, batch: int) -> int:
  """Bytes of the residuals `jax.vjp` keeps for the backward pass (its pullback's leaves), less
  those that are the arguments themselves or literals."""
  forward = _forward(graphdef, dataset)

  def loss(state, x):
    return jnp.sum(forward(state, x).astype(jnp.float32))

  def residuals(state, x):
    return jax.tree.leaves(jax.vjp(loss, state, x)[1])

  x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
  jaxpr = jax.make_jaxpr(residuals)(state, x).jaxpr
  arguments = set(jaxpr.invars)
  total = 0
  for v in jaxpr.outvars:
    if hasattr(v, 'val') or v in arguments:  # a literal, or an argument passed through
      continue
    total += int(np.prod(v.aval.shape, dtype=np.int64)) * np.dtype(v.aval.dtype).itemsize
  return total


def activation_bytes(graphdef, state, shape, dataset: str) -> int:
  """Bytes autodiff keeps for the backward pass, per example: the residuals of a batch of 2 minus
  those of a batch of 1, so that what does not grow with the batch (parameters, their bfloat16
  copies, constants) is left out."""
  return (_residual_bytes(graphdef, state, shape, dataset, 2)
          - _residual_bytes(graphdef, state, shape, dataset, 1))


# ------------------------------------------------------------------------------------------------
# Analytic count (multiply-adds): matmuls, convolutions, attention. Elementwise work is left out.

def _grid(model_cfg, shape):
  """(n_t, n_h, n_w) of the first tube: the (time, space) token grid factorised patterns use."""
  _, thw = tokenizers.clip_shape(shape, model_option(model_cfg, 'in_channels'))
  tube = tokenizers.parse_tubes(model_cfg.tubes)[0]
  return tokenizers.tube_grid(*tube, thw)


def analytic_macs(model_cfg, shape, classes: int) -> dict:
  """Closed-form multiply-adds of one forward pass, by part (tokenizer, encoder, pool, classifier).

  Written from the papers, independently of the model code, to cross-check XLA's count. An
  attention pattern (config.model.attention) is a list of steps, each over groups of tokens:
    joint      all tokens                         TubeViT, ViViT M1, TimeSformer ST
    space      each frame                         TimeSformer S
    divided    time (+ its own projections and a linear layer) then space      TimeSformer T+S
    axial      time, width (each + projections + linear layer), then height   TimeSformer T+W+H
    local_global  local F x H/2 x W/2 windows (+ projections + linear), then global stride-2 grid
    factorised_self_attention  space, then time (+ projections)               ViViT M3
    factorised_dot_product     half the heads over space, half over time      ViViT M4
  and encoder='factorised' is ViViT M2 (spatial encoder per frame, then L_t temporal layers).
  A class token joins every group except temporal ones (TimeSformer's code), one copy per group.
  """
  d, m, layers = int(model_cfg.hidden_size), int(model_cfg.mlp_dim), int(model_cfg.num_layers)
  cin = model_option(model_cfg, 'in_channels')
  is_image, _ = tokenizers.clip_shape(shape, cin)
  tubes = tokenizers.parse_tubes(model_cfg.tubes)
  counts = tokenizers.count_tokens(model_cfg, shape)['per_tube']
  tokenizer = sum(k_n * math.prod(k) * cin * d for k_n, (k, _, _) in zip(counts, tubes))
  n = sum(counts)
  head = model_option(model_cfg, 'head')
  attention = 'joint' if is_image else model_option(model_cfg, 'attention')
  ncls = class_tokens(model_cfg, shape)

  def attn(groups, length):  # QK^T and AV of `groups` independent sequences of `length`
    return 2 * groups * length * length * d

  def layer(tokens, groups, length, mlp_tokens):  # one joint-style block
    return 4 * d * d * tokens + attn(groups, length) + 2 * d * m * mlp_tokens

  if model_option(model_cfg, 'encoder') == 'factorised':  # ViViT Model 2
    nt, nh, nw = _grid(model_cfg, shape)
    ns = nh * nw
    cs = 1 if model_option(model_cfg, 'spatial_pool') == 'token' else 0
    ct = 1 if head == 'token' else 0
    spatial = layers * nt * layer(ns + cs, 1, ns + cs, ns + cs)
    lt = model_option(model_cfg, 'temporal_layers')
    encoder = spatial + lt * layer(nt + ct, 1, nt + ct, nt + ct)
    pooled = nt
  elif attention == 'joint':
    encoder = layers * layer(n + ncls, 1, n + ncls, n + ncls)
    pooled = n
  else:
    nt, nh, nw = _grid(model_cfg, shape)
    ns = nh * nw
    c1 = 1 if ncls else 0
    groupings = {  # name: (groups, tokens per group without class tokens)
        'space': (nt, ns), 'time': (ns, nt), 'width': (nt * nh, nw), 'height': (nt * nw, nh),
        'local': (4, n // 4), 'global': (8, n // 8)}
    steps = {  # (grouping, own projections + linear layer: 'fc' | projections only: 'proj' | '')
        'space': [('space', '')],
        'divided': [('time', 'fc'), ('space', '')],
        'axial': [('time', 'fc'), ('width', 'fc'), ('height', '')],
        'local_global': [('local', 'fc'), ('global', '')],
        'factorised_self_attention': [('space', ''), ('time', 'proj')],
    }
    if attention == 'factorised_dot_product':
      per_layer = 4 * d * d * n + (attn(nt, ns) + attn(ns, nt)) // 2 + 2 * d * m * n
    elif attention in steps:
      per_layer = 2 * d * m * (n + ncls)
      for grouping, extra in steps[attention]:
        groups, length = groupings[grouping]
        if grouping == 'time' or not c1:
          tokens, glen = n, length
        elif attention == 'space':  # one class token per frame, in its own frame
          tokens, glen = n + ncls, length + 1
        else:
          tokens, glen = n + groups, length + 1
        per_layer += 4 * d * d * tokens + attn(groups, glen) + (d * d * n if extra == 'fc' else 0)
    else:
      raise ValueError(f'analytic count: unknown config.model.attention={attention!r}.')
    encoder = layers * per_layer
    pooled = n
  if head == 'map':
    hm = model_option(model_cfg, 'head_mlp_dim')  # 0: TubeViT's pooling, no MLP
    pool = 2 * d * d + 2 * pooled * d * d + 2 * pooled * d + 2 * d * hm
  else:
    pool = 0
  classifier = d * classes
  total = tokenizer + encoder + pool + classifier
  return dict(total=float(total), tokenizer=float(tokenizer), encoder=float(encoder),
              pool=float(pool), classifier=float(classifier))


# ------------------------------------------------------------------------------------------------
# Summary

def summarize(config, *, activations: bool = True) -> dict:
  """The numbers `info` prints, as one JSON-able dict (see the module docstring)."""
  validation.validate(config, num_devices=_self_consistent_devices(config), process_count=1)
  classes = sources.num_classes(config)
  # FLOPs and shapes do not depend on scan or remat; unrolled layers make XLA's count exact
  # (its cost analysis counts a while-loop body once).
  graphdef, state = video_vit.abstract_model(config.model, classes)
  flops_graphdef, flops_state = graphdef, state
  if config.model.scan_layers:
    flops_graphdef, flops_state = video_vit.abstract_model(
        _flat_model_cfg(config.model, scan_layers=False), classes)
  params = param_counts(state)

  out = dict(
      config=dict(model=config.model.name, dtype=config.model.dtype,
                  attention=model_option(config.model, 'attention'),
                  encoder=config.model.encoder,
                  hidden_size=int(config.model.hidden_size),
                  num_layers=int(config.model.num_layers)),
      params=params['total'], params_by_module=params['by_module'], params_heads=params['heads'],
      params_mib=params['total'] * 4 / 2**20,
      tokens={}, gflops_per_view={}, gflops_per_view_analytic={}, views={}, gflops_per_video={},
      activation_mib_per_example={},
      flops_convention=FLOPS_CONVENTION, activation_note=ACTIVATION_NOTE)
  for name, ds in config.datasets.items():
    shape = input_shape(ds)
    out['tokens'][name] = token_counts(config.model, shape)
    macs = xla_macs(flops_graphdef, flops_state, shape, name)
    out['gflops_per_view'][name] = macs / 1e9
    out['gflops_per_view_analytic'][name] = analytic_macs(config.model, shape,
                                                          classes[name])['total'] / 1e9
    t, s = views(ds)
    out['views'][name] = [t, s]
    out['gflops_per_video'][name] = macs * t * s / 1e9
    if activations:
      out['activation_mib_per_example'][name] = activation_bytes(graphdef, state, shape,
                                                                 name) / 2**20
  return out


def train_flops(config, classes: Mapping[str, int]) -> float:
  """FLOPs of one training step over the global batch of every dataset (module docstring)."""
  total = 0.0
  for name, ds in config.datasets.items():
    macs = analytic_macs(config.model, input_shape(ds), classes[name])['total']
    total += 3 * 2 * macs * ds.batch_size
  return total


def example_train_flops(model_cfg, ds_cfg, classes: int) -> float:
  """FLOPs of one training example of one dataset (train_flops per example)."""
  return 3 * 2 * analytic_macs(model_cfg, input_shape(ds_cfg), classes)['total']
