"""The PyTorch side of `bench zoo`: HuggingFace TimeSformer-B (divided space-time, 8x224) and
ViViT-B/16x2 Model 1 (32x224) train steps at the same batch and precision, eager and with
`torch.compile`, so our figures can be read against them from one run on one machine.

  python scripts/bench_hf_torch.py [--batch_size=8] [--steps=10] [--warmup=3] [--no_compile]
                                   [--models=timesformer,vivit] [--tiny] [--json]

A train step is what ours does: forward in bfloat16 autocast with float32 parameters, softmax
cross-entropy, backward, an SGD-momentum update (the papers' optimizer for both models). Attention
runs through PyTorch's scaled_dot_product_attention where transformers uses it (its flash kernel on
a GPU). FLOPs are not counted here: read examples/s and step time against ours. --tiny shrinks both
models (for a CPU check of the script itself).
"""
import argparse
import json
import statistics
import time

# The configs of the paper models, as the HF model cards of facebook/timesformer-base-finetuned-k400
# and google/vivit-b-16x2-kinetics400 give them.
MODELS = {
    'timesformer': dict(frames=8, size=224, extra=dict(patch_size=16,
                                                       attention_type='divided_space_time')),
    'vivit': dict(frames=32, size=224, extra=dict(tubelet_size=[2, 16, 16])),
}
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def build(name: str, *, tiny: bool):
  from transformers import (TimesformerConfig, TimesformerForVideoClassification, VivitConfig,
                            VivitForVideoClassification)
  spec = MODELS[name]
  frames, size = (4, 32) if tiny else (spec['frames'], spec['size'])
  extra = dict(spec['extra'])
  if tiny:
    extra.update(patch_size=8) if name == 'timesformer' else extra.update(tubelet_size=[2, 8, 8])
  common = dict(num_frames=frames, image_size=size, num_labels=400, **(TINY if tiny else {}))
  if name == 'timesformer':
    model = TimesformerForVideoClassification(TimesformerConfig(**common, **extra))
  else:
    model = VivitForVideoClassification(VivitConfig(**common, **extra))
  return model, frames, size


def measure(name: str, *, batch_size: int, steps: int, warmup: int, compile_: bool,
            tiny: bool) -> dict:
  import torch
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model, frames, size = build(name, tiny=tiny)
  model = model.to(device).train()
  opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
  # HF video models take (B, T, C, H, W).
  x = torch.randn(batch_size, frames, 3, size, size, device=device)
  y = torch.randint(0, 400, (batch_size,), device=device)
  loss_fn = torch.nn.CrossEntropyLoss()

  def step():
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
      logits = model(pixel_values=x).logits
    loss = loss_fn(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  fn = torch.compile(step) if compile_ else step
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  start = time.perf_counter()
  fn()
  sync()
  first_s = time.perf_counter() - start
  for _ in range(max(warmup - 1, 0)):
    fn()
  sync()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  return dict(model=name, framework='torch', mode='compile' if compile_ else 'eager',
              device=torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
              batch_size=batch_size, step_s=step_s, examples_per_s=batch_size / step_s,
              first_step_s=first_s, torch=torch.__version__)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--models', default='timesformer,vivit')
  parser.add_argument('--no_compile', action='store_true', help='eager only')
  parser.add_argument('--tiny', action='store_true')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  rows = []
  for name in args.models.split(','):
    for compile_ in (False,) if args.no_compile else (False, True):
      row = measure(name, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                    compile_=compile_, tiny=args.tiny)
      rows.append(row)
      print(json.dumps(row) if args.json else
            f"HF {name:<12} {row['mode']:<8} batch {row['batch_size']:>3}  "
            f"{1e3 * row['step_s']:8.1f} ms/step  {row['examples_per_s']:8.1f} ex/s  "
            f"({row['device']})", flush=True)
  return rows


if __name__ == '__main__':
  main()
