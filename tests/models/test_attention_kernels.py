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
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
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


def _on(platform, kind, fn, *args, **kw):
  """fn(*args) with the computation's platform faked through an abstract mesh."""
  mesh = jax.sharding.AbstractMesh(
      (1,), ('data',), abstract_device=jax.sharding.AbstractDevice(
          device_kind=kind, num_cores=1, platform=platform))
  with jax.sharding.use_abstract_mesh(mesh):
    return fn(*args, **kw)


def test_auto_choice_by_backend_and_shape(caplog):
  attention._logged.clear()
  assert attention.resolve_impl('auto') == 'einsum'   # this suite runs on CPU
  q = jax.ShapeDtypeStruct((1, 8, 2, 64), jnp.bfloat16)
  long_k = jax.ShapeDtypeStruct((1, attention.SPLASH_MIN_TOKENS, 2, 64), jnp.bfloat16)
  resolve = lambda platform, k, q=q: _on(  # noqa: E731
      platform, 'NVIDIA H200' if platform == 'gpu' else 'TPU v5 lite', attention.resolve_impl,
      'auto', q, k)
  with caplog.at_level('INFO'):
    assert resolve('tpu', long_k) == 'splash'
  assert "-> 'splash'" in caplog.text
  assert resolve('tpu', q) == 'xla'           # short: XLA's attention
  assert resolve('gpu', long_k) == 'cudnn'
  odd = jax.ShapeDtypeStruct((1, 197, 2, 64), jnp.bfloat16)
  assert resolve('gpu', odd, odd) == 'cudnn'  # any length: cudnn_attention pads


@pytest.mark.parametrize('dtype,head_dim,capability,impl,reason', [
    (jnp.float32, 64, None, 'xla', 'float32 inputs'),
    (jnp.float16, 64, None, 'cudnn', None),
    (jnp.bfloat16, 80, None, 'cudnn', None),            # ViT-H: 1280 / 16
    (jnp.bfloat16, 12, None, 'xla', 'head_dim 12'),      # not a multiple of 8
    (jnp.bfloat16, 192, None, 'xla', 'at most 128'),    # unknown GPU: the Ampere limit
    (jnp.bfloat16, 192, (9, 0), 'cudnn', None),          # Hopper: up to 256
    (jnp.bfloat16, 264, (9, 0), 'xla', 'at most 256'),
    (jnp.bfloat16, 64, (7, 5), 'xla', 'compute capability (7, 5)'),
    (jnp.bfloat16, 64, (0, 0), 'xla', 'compute capability (0, 0)'),   # not CUDA
])
def test_gpu_choice_and_one_logged_reason(monkeypatch, caplog, dtype, head_dim, capability,
                                          impl, reason):
  """Which kernel a GPU call gets, and the fallback reason: logged once per cause, whatever the
  shapes and however often it is asked; explicit 'cudnn' falls back the same way."""
  attention._logged.clear()
  monkeypatch.setattr(attention, 'gpu_capability', lambda: capability)
  with caplog.at_level('INFO'):
    for requested in ('auto', 'cudnn'):
      for t in (197, 198, 197):
        q = jax.ShapeDtypeStruct((2, t, 4, head_dim), dtype)
        assert _on('gpu', 'NVIDIA H200', attention.resolve_impl, requested, q, q) == impl
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  if reason is None:
    assert not warnings
  else:
    assert len(warnings) == 2, warnings    # one for 'auto', one for 'cudnn'
    assert all(reason in w and "-> 'xla'" in w for w in warnings), warnings


def _spy_cudnn(monkeypatch):
  """Lets jax's cuDNN attention trace on CPU (no cuDNN here: only tracing, never compiling)."""
  from sparse_tubes import compat
  monkeypatch.setattr(compat.jax_cudnn_fused_attention(), 'check_cudnn_version', lambda: 91000)


def _train_jaxpr(f, tq, tk, heads=2, head_dim=64, batch=2):
  q = jax.ShapeDtypeStruct((batch, tq, heads, head_dim), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((batch, tk, heads, head_dim), jnp.bfloat16)
  loss = lambda *a: f(*a).astype(jnp.float32).sum()  # noqa: E731
  return str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, k))


# Zoo lengths: image ViT 197, TubeViT 539 (+1 class token), TimeSformer 8x14x14+1, ViViT
# 16x14x14+1; grouped: time (8 frames), axial rows + class token, local window 8x7x7 + class token,
# attention pooling (one probe over all tokens).
ZOO = [(197, 197), (540, 540), (539, 539), (1569, 1569), (3137, 3137), (8, 8), (15, 15),
       (393, 393), (1, 1568), (1, 3137), (7, 7)]


def test_jax_cudnn_train_check_issue_17(monkeypatch):
  """jax's own cuDNN training path, traced on CPU: the raw call fails at 197 tokens with the error
  of issue 17; ours passes at every zoo length, through the padding mask where it padded."""
  _spy_cudnn(monkeypatch)
  raw = lambda *a: jax.nn.dot_product_attention(*a, implementation='cudnn')  # noqa: E731
  with pytest.raises(NotImplementedError, match='Unsupported sequence length Q 197, KV 197'):
    _train_jaxpr(raw, 197, 197)
  for tq, tk in ZOO:
    text = _on('gpu', 'NVIDIA H200', _train_jaxpr,
               lambda *a: attention.dot_product_attention(*a, impl='auto'), tq, tk)
    assert 'dot_product_attention_bwd_wrapper' in text, (tq, tk)
    assert ('MaskType.PADDING' in text) == (tk % 2 == 1), (tq, tk)


PADDED = [(197, 197, 2, 8), (1569, 1569, 1, 4), (539, 539, 2, 8), (7, 7, 2, 8), (1, 197, 2, 8),
          (8, 8, 2, 8), (15, 15, 2, 8)]


@pytest.mark.parametrize('tq,tk,heads,head_dim,multiple,mask', [
    c + (attention.CUDNN_SEQ_MULTIPLE, 'seqlens') for c in PADDED] + [
        (197, 197, 2, 8, 64, 'seqlens'), (197, 197, 2, 8, 64, 'bias'), (1, 9, 2, 8, 64, 'bias')])
def test_padded_cudnn_wrapper_matches_einsum(tq, tk, heads, head_dim, multiple, mask):
  """The pad + mask + slice wrapper of the cuDNN path, run through XLA on CPU (the same
  jax.nn.dot_product_attention call, implementation='xla'): outputs and q/k/v gradients equal the
  unpadded einsum attention. (2, 8) batches stand for grouped shapes: B*G groups of n tokens."""
  rng = np.random.RandomState(tq + tk)
  batch = 8 if tk <= 15 else 2
  q = rng.standard_normal((batch, tq, heads, head_dim)).astype(np.float32)
  k, v = (rng.standard_normal((batch, tk, heads, head_dim)).astype(np.float32) for _ in range(2))
  wrapper = lambda *a: attention.cudnn_attention(  # noqa: E731
      *a, implementation='xla', multiple=multiple, mask=mask)
  assert_close(grads_of(wrapper, q, k, v), grads_of(attention.einsum_attention, q, k, v),
               atol=1e-5)


def test_cudnn_off_gpu_fails_before_compile():
  with pytest.raises(ValueError, match="attention_impl = 'cudnn'.*'cpu'"):
    attention.MultiHeadAttention(24, 2, attention_impl='cudnn', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='use one of'):
    attention.check_impl('flash')


def test_gpu_check_script_runs_its_wrapper_path_on_cpu(capsys):
  """scripts/gpu_attention_check.py away from a GPU: refuses without --platform_check=false; with
  it, runs the cuDNN wrapper through XLA against einsum (one odd length, the float32 fallback)."""
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).parents[2] / 'scripts' / 'gpu_attention_check.py'
  spec = importlib.util.spec_from_file_location('gpu_attention_check', path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.main(['--cases=tiny']) == 2
  small = ['--platform_check=false', '--heads=1', '--batch=1', '--head_dim=8']
  assert script.main(small + ['--cases=tiny,float32']) == 0
  out = capsys.readouterr().out
  assert 'impl=cudnn' in out and 'impl=xla' in out and '2/2 passed' in out, out
  assert script.main(small + ['--cases=tiny', '--tolerance=1e-6']) == 1   # bfloat16 is not exact


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
  # the cuDNN wrapper's padding (9 -> 10 tokens) and mask per shard, through XLA on CPU
  padded = jax.jit(lambda *a: attention._sharded(
      lambda *s: attention.cudnn_attention(*s, implementation='xla'), *a))
  np.testing.assert_allclose(padded(q, k, v), f('einsum')(q, k, v), atol=1e-5)
print('OK')
'''


def test_kernel_runs_under_shard_map_over_batch_and_heads(tmp_path):
  """4 CPU devices, batch over 'data' and heads over 'tensor': each device runs the kernel on its
  shard and the result is the einsum one."""
  import os
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', SHARDED], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]
