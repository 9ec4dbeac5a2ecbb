"""`prepare`: writes a dataset in the TFDS (ArrayRecord) form training reads (data/prepare.py).

  python -m sparse_tubes prepare DATASET --manual_dir=DIR [--data_dir=DIR] [--workers=N]
      [--beam_runner=DirectRunner|DataflowRunner|SparkRunner --beam_options="--project=P ..."]
"""
from absl import app

from sparse_tubes.commands import need


def main(flags, args):
  from sparse_tubes.data import prepare
  if len(args) != 1:
    raise app.UsageError(f'prepare takes one dataset name, one of {prepare.DATASETS}.')
  prepare.run(args[0], manual_dir=need(flags.manual_dir, 'manual_dir', '/data/kinetics400'),
              data_dir=flags.data_dir, workers=flags.workers, beam_runner=flags.beam_runner,
              beam_options=flags.beam_options)
