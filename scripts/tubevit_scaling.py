"""Runs configs/synthetic/tubevit_scaling_small.py end to end and prints video top-1 of the scaled
model (image ViT + small model's tubes + frozen early layers + gates) against the same larger model
trained from its image init alone, at the same number of steps.

  python scripts/tubevit_scaling.py [--root=/tmp/tubevit_scaling] [--steps=150]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from sparse_tubes import config as config_lib  # noqa: E402
from sparse_tubes import checkpoints as ckpt_lib  # noqa: E402
from sparse_tubes.commands import evaluate as evaluate_lib  # noqa: E402
from sparse_tubes.pretrained import vit  # noqa: E402
from sparse_tubes.commands import train as train_cmd  # noqa: E402

CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs', 'synthetic',
                      'tubevit_scaling_small.py')


def run(stage, root, steps=None, **overrides):
  c = config_lib.load(f'{CONFIG}:{stage},root={root}', **overrides)
  if steps:
    c.total_steps = steps
    c.checkpoint_every_steps = steps
  workdir = os.path.join(root, stage)
  start = time.time()
  train_cmd.train(c, workdir)
  results = evaluate_lib.evaluate(c, workdir)['datasets']
  return {name: round(r['top1'], 4) for name, r in results.items()}, time.time() - start


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--root', default='/tmp/tubevit_scaling')
  ap.add_argument('--steps', type=int, default=0, help='fine-tuning steps (scaled, baseline)')
  ap.add_argument('--data_dir', default='')
  args = ap.parse_args(argv)
  kw = dict(data_dir=args.data_dir) if args.data_dir else {}
  out = {}
  for stage in ('small', 'image'):
    out[stage] = run(stage, args.root, **kw)
  params = ckpt_lib.read_params(os.path.join(args.root, 'image'))
  vit.save_npz(vit.from_model_params(params), os.path.join(args.root, 'image_vit.npz'))
  for stage in ('scaled', 'baseline'):
    out[stage] = run(stage, args.root, args.steps or None, **kw)
  print('\nTubeViT image-to-video scaling (moving shapes; video top-1 = direction of motion, '
        '8 classes; image top-1 = shape, 3 classes)')
  for stage, (acc, secs) in out.items():
    print(f'  {stage:9s} {json.dumps(acc)}  ({secs:.0f} s)')
  return out


if __name__ == '__main__':
  main()
