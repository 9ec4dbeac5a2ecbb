"""Command line: python -m sparse_tubes {train,evaluate} --config=CONFIG.py[:arg] --workdir=DIR

  --config=configs/synthetic/tubevit_tiny.py:arg   reaches get_config(arg)
  --config.total_steps=100                         overrides a field (unknown fields are errors)
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ('train', 'evaluate')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a get_config(arg) module).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and results go.')
_STEP = flags.DEFINE_integer('step', None, 'evaluate: checkpoint step (default: the latest).')


def main(argv):
  commands = [a for a in argv[1:]]
  if len(commands) != 1 or commands[0] not in COMMANDS:
    raise app.UsageError(f'Give one command, one of {COMMANDS}; got {commands or "none"}.')
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=configs/synthetic/tubevit_tiny.py')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required: where checkpoints and logs go.')
  config, workdir = _CONFIG.value, _WORKDIR.value
  if not flags.FLAGS['verbosity'].present:
    # Progress lines and results are printed; library INFO logs (TFDS, Orbax) would bury them.
    logging.set_verbosity(logging.WARNING)

  if commands[0] == 'train':
    from sparse_tubes.train import loop
    summary = loop.train(config, workdir)
    print(f"Trained to step {summary['step']}; checkpoints in {os.path.join(workdir, 'checkpoints')}",
          flush=True)
  elif commands[0] == 'evaluate':
    from sparse_tubes import evaluate
    summary = evaluate.evaluate(config, workdir, step=_STEP.value)
    print(evaluate.results_table(summary), flush=True)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
