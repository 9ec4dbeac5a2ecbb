"""Command line.

  python -m sparse_tubes train    --config=CONFIG.py[:arg] --workdir=DIR
  python -m sparse_tubes evaluate --config=CONFIG.py[:arg] --workdir=DIR [--step=N]
  python -m sparse_tubes info     --config=CONFIG.py[:arg] [--json]
  python -m sparse_tubes prepare  DATASET --manual_dir=DIR [--data_dir=DIR] [--workers=N]

  --config=configs/synthetic/tubevit_tiny.py:arg   reaches get_config(arg)
  --config.total_steps=100                         overrides a field (unknown fields are errors)
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ('train', 'evaluate', 'info', 'prepare')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a get_config(arg) module).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and results go.')
_STEP = flags.DEFINE_integer('step', None, 'evaluate: checkpoint step (default: the latest).')
_JSON = flags.DEFINE_bool('json', False, 'info: print one JSON object instead of tables.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'prepare: where the downloaded dataset is.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'prepare: TFDS data dir to write (default: '
                                '$SPARSE_TUBES_DATA_DIR or ~/.cache/sparse_tubes/tfds).')
_WORKERS = flags.DEFINE_integer('workers', None, 'prepare: parallel decoding processes '
                                '(default: the number of cores).')


def _need(value, flag: str, example: str):
  if not value:
    raise app.UsageError(f'--{flag} is required here, e.g. --{flag}={example}')
  return value


def main(argv):
  args = argv[1:]
  if not args or args[0] not in COMMANDS:
    raise app.UsageError(f'Give a command, one of {COMMANDS}; got {args[0] if args else "none"}.')
  command, rest = args[0], args[1:]
  if command != 'prepare' and rest:
    raise app.UsageError(f'Unexpected arguments {rest}: flags are written --name=value.')
  if not flags.FLAGS['verbosity'].present:
    # Progress lines and results are printed; library INFO logs (TFDS, Orbax) would bury them.
    logging.set_verbosity(logging.WARNING)

  if command == 'prepare':
    from sparse_tubes.data import prepare
    if len(rest) != 1:
      raise app.UsageError(f'prepare takes one dataset name, one of {prepare.DATASETS}.')
    prepare.run(rest[0], manual_dir=_need(_MANUAL_DIR.value, 'manual_dir', '/data/kinetics400'),
                data_dir=_DATA_DIR.value, workers=_WORKERS.value)
    return

  config = _need(_CONFIG.value, 'config', 'configs/synthetic/tubevit_tiny.py')
  if command == 'info':
    from sparse_tubes import info
    info.run(config, as_json=_JSON.value)
    return

  workdir = _need(_WORKDIR.value, 'workdir', '/tmp/run')
  if command == 'train':
    from sparse_tubes.train import loop
    summary = loop.train(config, workdir)
    print(f"Trained to step {summary['step']}; checkpoints in {os.path.join(workdir, 'checkpoints')}",
          flush=True)
  elif command == 'evaluate':
    from sparse_tubes import evaluate
    summary = evaluate.evaluate(config, workdir, step=_STEP.value)
    print(evaluate.results_table(summary), flush=True)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
