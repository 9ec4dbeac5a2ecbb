"""`python -m sparse_tubes info --config=...`: what a config costs, without allocating the model
(the numbers come from models/costs.py).

Everything here works on abstract shapes (`nnx.eval_shape`, `jax.ShapeDtypeStruct`): a ViT-H video
model is described in seconds on a laptop CPU, and nothing is compiled.

  params        parameters in total, per top-level module (tokenizer, encoder, pool, heads, ...) and
                per dataset head; from the abstract parameter tree.
  tokens        tokens per input of each dataset (per tube for TubeViT), `tokenizers.count_tokens`,
                plus the class tokens the model adds.
  GFLOPs/view   forward pass of one view (one clip, batch 1) in the papers' convention: a
                multiply-add counts as ONE FLOP (ViViT, TimeSformer and TubeViT all report it so).
                Reported: XLA's cost analysis of the lowered (not compiled) forward, divided by 2
                (XLA counts a multiply-add as 2); it also counts elementwise work (softmax, GELU,
                LayerNorm) at half weight, about 1% more than matmuls alone. `analytic` is the
                closed-form count of matmuls, convolutions and attention (what fvcore-style
                counters give); tests keep the two within a few percent.
  activations   bytes of the tensors JAX's autodiff saves for the backward pass of one example
                (`saved_residuals` of the loss), at the config's dtype and after its remat policy,
                excluding parameters and the input. This is the memory a training step holds per
                example between forward and backward before XLA fuses or rematerialises anything;
                the compiled peak is usually somewhat lower.
"""
import json

from sparse_tubes.models import costs


def _fmt(x: float) -> str:
  return f'{x:,.1f}' if abs(x) >= 10 else f'{x:.3g}'


_MODULE_ORDER = ('tokenizer', 'posemb', 'cls_token', 'spatial_cls_token', 'encoder',
                 'spatial_encoder', 'temporal_encoder', 'pool', 'heads')


def format_text(s: dict) -> str:
  c = s['config']
  encoder = ', factorised encoder' if c['encoder'] == 'factorised' else ''
  lines = [f"{c['model']}: {c['num_layers']} layers x {c['hidden_size']} ({c['attention']} attention"
           f"{encoder}, {c['dtype']} activations)",
           f"parameters  {s['params']:,}  ({s['params'] / 1e6:.1f}M, {s['params_mib']:.0f} MiB in "
           'float32)']
  order = sorted(s['params_by_module'],
                 key=lambda k: (_MODULE_ORDER.index(k) if k in _MODULE_ORDER else 50, k))
  for k, v in ((k, s['params_by_module'][k]) for k in order):
    lines.append(f'  {k:<20}{v:>14,}')
  for k, v in s['params_heads'].items():
    lines.append(f'    head {k:<13}{v:>14,}')
  lines.append('')
  header = f"{'dataset':<16}{'input':<18}{'tokens':>8}{'GFLOPs/view':>13}{'(analytic)':>12}" \
           f"{'views':>7}{'GFLOPs/video':>14}{'act. MiB/ex':>13}"
  lines.append(header)
  for name in s['tokens']:
    tok = s['tokens'][name]
    shape = 'x'.join(str(v) for v in tok['input_shape'][:-1])
    t, v = s['views'][name]
    act = s['activation_mib_per_example'].get(name)
    lines.append(
        f"{name:<16}{shape:<18}{tok['total'] + tok['class_tokens']:>8}"
        f"{_fmt(s['gflops_per_view'][name]):>13}{_fmt(s['gflops_per_view_analytic'][name]):>12}"
        f"{f'{t}x{v}':>7}{_fmt(s['gflops_per_video'][name]):>14}"
        f"{(_fmt(act) if act is not None else '-'):>13}")
    per_tube = ' + '.join(str(n) for n in tok['per_tube'])
    extra = f" + {tok['class_tokens']} class" if tok['class_tokens'] else ''
    if sum(1 for k in tok['per_tube'] if k) > 1 or extra:
      lines.append(f"{'':<16}tokens = {per_tube}{extra}")
  lines.append('')
  lines.append('GFLOPs: ' + s['flops_convention'])
  lines.append('act. MiB/ex: ' + s['activation_note'])
  return '\n'.join(lines)


def run(config, *, as_json: bool = False) -> dict:
  summary = costs.summarize(config)
  print(json.dumps(summary) if as_json else format_text(summary), flush=True)
  return summary


def main(flags, args):
  from sparse_tubes.commands import need
  run(need(flags.config, 'config', 'configs/synthetic/tubevit_tiny.py'), as_json=flags.json)
