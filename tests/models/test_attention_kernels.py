"""Every attention pattern under every kernel that runs here matches the einsum path: outputs and
gradients (inputs and parameters). Splash runs in Pallas interpret mode on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import attention
from sparse_tubes.models import attention_patterns as patterns
from sparse_tubes.models.encoder import EncoderBlock

GRID = (2, 4, 4)
D = 8
KERNELS = ('xla', 'splash')


def grads_of(f, *args):
  return jax.jit(jax.value_and_grad(lambda *a: (f(*a) ** 2).sum(), argnums=range(len(args))))(
      *args)


def assert_close(a, b, atol=2e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)


@pytest.mark.parametrize('impl', KERNELS)
@pytest.mark.parametrize('tq,tk', [(5, 7), (1, 9), (130, 130)])
def test_core_matches_einsum_with_padding(impl, tq, tk):
  """Lengths that are not a multiple of the kernel block (130 pads to 256) and a single query."""
  rng = np.random.RandomState(tq)
  q = rng.standard_normal((2, tq, 2, 8)).astype(np.float32)
  k, v = (rng.standard_normal((2, tk, 2, 8)).astype(np.float32) for _ in range(2))
  run = lambda impl: grads_of(  # noqa: E731
      lambda *a: attention.dot_product_attention(*a, impl=impl), q, k, v)
  assert_close(run(impl), run('einsum'))


CASES = [  # (pattern, class tokens)
    ('joint', 1), ('space', 0), ('space', GRID[0]), ('divided', 1), ('axial', 0),
    ('local_global', 1), ('factorised_self_attention', 0), ('factorised_dot_product', 0)]


@pytest.mark.parametrize('pattern,num_cls,impl', [c + ('splash',) for c in CASES] + [
    ('joint', 1, 'xla'), ('divided', 1, 'xla')])
def test_every_pattern_matches_einsum(pattern, num_cls, impl):
  def block(impl):
    return EncoderBlock(D, 2, 16, attention=pattern, temporal_zero_init=False,
                        attention_impl=impl, rngs=nnx.Rngs(0))
  layout = patterns.Layout(GRID, num_cls)
  x = np.random.RandomState(0).standard_normal((2, num_cls + int(np.prod(GRID)), D)).astype(
      np.float32)
  def run(b):
    graphdef, params = nnx.split(b)
    return grads_of(lambda p, x: nnx.merge(graphdef, p)(x, layout), params, x)
  assert_close(run(block(impl)), run(block('einsum')))


@pytest.mark.parametrize('impl', KERNELS)
def test_attention_pooling_probe_matches_einsum(impl):
  """Cross-attention of one learned query over all tokens (attention pooling)."""
  x = np.random.RandomState(1).standard_normal((2, 9, 24)).astype(np.float32)
  probe = np.random.RandomState(2).standard_normal((2, 1, 24)).astype(np.float32)
  def run(impl):
    graphdef, params = nnx.split(
        attention.MultiHeadAttention(24, 2, attention_impl=impl, rngs=nnx.Rngs(0)))
    return grads_of(lambda p, a, b: nnx.merge(graphdef, p)(a, b), params, probe, x)
  assert_close(run(impl), run('einsum'))


def test_auto_choice_by_backend_and_shape(caplog):
  assert attention.resolve_impl('auto') == 'einsum'   # this suite runs on CPU
  q = jax.ShapeDtypeStruct((1, 8, 2, 64), jnp.bfloat16)
  long_k = jax.ShapeDtypeStruct((1, attention.SPLASH_MIN_TOKENS, 2, 64), jnp.bfloat16)
  def resolve(platform, kind, k, q=q):
    mesh = jax.sharding.AbstractMesh(
        (1,), ('data',), abstract_device=jax.sharding.AbstractDevice(
            device_kind=kind, num_cores=1, platform=platform))
    with jax.sharding.use_abstract_mesh(mesh):
      return attention.resolve_impl('auto', q, k)
  with caplog.at_level('INFO'):
    assert resolve('tpu', 'TPU v5 lite', long_k) == 'splash'
  assert "-> 'splash'" in caplog.text
  assert resolve('tpu', 'TPU v5 lite', q) == 'xla'           # short: XLA's attention
  assert resolve('gpu', 'NVIDIA H100', long_k) == 'cudnn'
  f32 = jax.ShapeDtypeStruct(q.shape, jnp.float32)
  assert resolve('gpu', 'NVIDIA H100', long_k, f32) == 'xla'  # cuDNN flash: 16-bit only


def test_cudnn_off_gpu_fails_before_compile():
  with pytest.raises(ValueError, match="attention_impl = 'cudnn'.*'cpu'"):
    attention.MultiHeadAttention(24, 2, attention_impl='cudnn', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='use one of'):
    attention.check_impl('flash')


SHARDED = r'''
import jax, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from sparse_tubes.models import attention
mesh = jax.make_mesh((2, 1, 2), ('data', 'fsdp', 'tensor'),
                     axis_types=(jax.sharding.AxisType.Auto,) * 3)
rules = (('batch', ('data', 'fsdp')), ('heads', 'tensor'))
rng = np.random.RandomState(0)
q, k, v = (jax.device_put(rng.standard_normal((4, 9, 4, 8)).astype(np.float32),
                          NamedSharding(mesh, P('data', None, 'tensor'))) for _ in range(3))
f = lambda impl: jax.jit(lambda *a: attention.dot_product_attention(*a, impl=impl))
with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
  text = jax.jit(lambda *a: attention.dot_product_attention(*a, impl='splash')).lower(
      q, k, v).as_text()
  assert 'shard_map' in text or 'manual' in text, text[:2000]
  np.testing.assert_allclose(f('splash')(q, k, v), f('einsum')(q, k, v), atol=1e-5)
print('OK')
'''


def test_kernel_runs_under_shard_map_over_batch_and_heads(tmp_path):
  """4 CPU devices, batch over 'data' and heads over 'tensor': each device runs the kernel on its
  shard and the result is the einsum one."""
  import os
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', SHARDED], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]
