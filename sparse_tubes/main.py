"""Command line.

  python -m sparse_tubes train    --config=CONFIG.py[:arg] --workdir=DIR
  python -m sparse_tubes evaluate --config=CONFIG.py[:arg] --workdir=DIR
                                  [--checkpoint=latest|STEP|all|watch] [--force]
                                  [--watch_timeout=S] [--save_predictions=FILE.npz]
  python -m sparse_tubes info     --config=CONFIG.py[:arg] [--json]
  python -m sparse_tubes prepare  DATASET --manual_dir=DIR [--data_dir=DIR] [--workers=N]
  python -m sparse_tubes convert  --from=hf|timesformer|vit_npz --input=PATH [--config=...] --workdir=DIR
  python -m sparse_tubes convert  --to=hf --workdir=DIR --output=HF_DIR [--dataset=NAME] [--step=N]
  python -m sparse_tubes plan     --config=CONFIG.py[:arg] --topology=v5e:4x4 [--json]
  python -m sparse_tubes predict  --workdir=DIR --input=VIDEO|CLIPS.npy [--config=...] [--top_k=5]
                                  [--save_logits=OUT.npy] [--dataset=NAME] [--step=N] [--fps=F]

  train, evaluate, predict (and convert --to) take --workdir alone when the workdir holds the
  config.json that `train` or `convert` wrote; --config=DIR/config.py loads the same config and
  takes --config.field overrides.

  --config=configs/synthetic/tubevit_tiny.py:arg   reaches get_config(arg)
  --config.total_steps=100                         overrides a field (unknown fields are errors)

  train and evaluate start the multi-host runtime themselves on a TPU pod, GKE or SLURM; elsewhere
  give --coordinator_address, --num_processes and --process_id (launch/local.py does).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ('train', 'evaluate', 'info', 'prepare', 'convert', 'predict', 'plan')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a get_config(arg) module).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and results go.')
_STEP = flags.DEFINE_integer('step', None, 'evaluate, predict, convert --to: checkpoint step '
                             '(default: the latest).')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'evaluate: latest (default), a step, all (every checkpoint, oldest first, '
    'skipping those with results in DIR/eval unless --force) or watch (evaluate each new checkpoint '
    'of a running training until its final step).')
_FORCE = flags.DEFINE_bool('force', False, 'evaluate --checkpoint=all|watch: evaluate again the '
                           'checkpoints whose results are already in DIR/eval.')
_WATCH_TIMEOUT = flags.DEFINE_float('watch_timeout', 3600.0, 'evaluate --checkpoint=watch: stop '
                                    'after this many seconds without a new checkpoint.')
_SAVE_PREDICTIONS = flags.DEFINE_string(
    'save_predictions', None, 'evaluate: write per-video aggregated scores, video ids and labels '
    'to this .npz (all/watch: one FILE_step<N>.npz per checkpoint).')
_JSON = flags.DEFINE_bool('json', False, 'info: print one JSON object instead of tables.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'prepare: where the downloaded dataset is.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'prepare: TFDS data dir to write (default: '
                                '$SPARSE_TUBES_DATA_DIR or ~/.cache/sparse_tubes/tfds).')
_WORKERS = flags.DEFINE_integer('workers', None, 'prepare: parallel decoding processes '
                                '(default: the number of cores).')
_FROM = flags.DEFINE_enum('from', None, ['hf', 'timesformer', 'vit_npz'],
                          'convert: the kind of checkpoint --input is.')
_TO = flags.DEFINE_enum('to', None, ['hf'], 'convert: export the workdir checkpoint to this layout.')
_INPUT = flags.DEFINE_string('input', None, 'convert: checkpoint path; predict: a video file or a '
                             '.npy clip batch (B,T,H,W,C float32).')
_OUTPUT = flags.DEFINE_string('output', None, 'convert --to=hf: the directory to write.')
_NUM_HEADS = flags.DEFINE_integer('num_heads', None, 'convert --from=timesformer: attention heads '
                                  '(not in the file; default hidden/64).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'predict: how many classes to print.')
_SAVE_LOGITS = flags.DEFINE_string('save_logits', None, 'predict: write the logits here (.npy).')
_DATASET = flags.DEFINE_string('dataset', None, 'predict, convert --to: which head (dataset) to use '
                               '(default: the first video dataset).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'train, evaluate: host:port of '
                                   'process 0, for a multi-process run jax cannot detect by itself.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'train, evaluate: processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'train, evaluate: this process, 0-based.')
_TOPOLOGY = flags.DEFINE_string('topology', None, 'plan: the TPU slice, e.g. v5e:4x4, v4:2x2x4, '
                                'v5p:2x4x4, v6e:4x4 (default: config.topology).')
_FPS = flags.DEFINE_float('fps', None, 'predict: frame rate to decode a video at (default: the '
                          "dataset's stored rate, 25 for Kinetics).")


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

  if command == 'convert' and _TO.value is None:
    from sparse_tubes import convert
    source = _need(_FROM.value, 'from', 'hf')
    result = convert.convert(source, _need(_INPUT.value, 'input', '/models/timesformer-base'),
                             _need(_WORKDIR.value, 'workdir', '/tmp/converted'), _CONFIG.value,
                             num_heads=_NUM_HEADS.value)
    print(f"Converted {result['input']} ({result['from']}, {result['model']}, "
          f"{result.get('params', 0):,} parameters) into {result['checkpoint_dir']}"
          + (f"; classifier -> head '{result['head']}'" if result.get('head') else '')
          + (f"; {result['dropped_head']}" if result.get('dropped_head') else ''), flush=True)
    return

  if command == 'plan':
    from sparse_tubes import plan
    plan.run(_need(_CONFIG.value, 'config', 'configs/kinetics400/tubevit_b.py'),
             topology=_TOPOLOGY.value, as_json=_JSON.value)
    return

  if command in ('train', 'evaluate'):
    # Before any other JAX call: a pod's processes find each other here.
    from sparse_tubes import distributed
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    distributed.quiet_followers()

  if command == 'info':
    from sparse_tubes import info
    info.run(_need(_CONFIG.value, 'config', 'configs/synthetic/tubevit_tiny.py'),
             as_json=_JSON.value)
    return

  workdir = _need(_WORKDIR.value, 'workdir', '/tmp/run')
  config = _CONFIG.value
  from sparse_tubes import run
  try:
    config = run.resolve_config(config, workdir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from None
  if command == 'convert':
    from sparse_tubes import convert
    result = convert.export_hf(config, workdir, _need(_OUTPUT.value, 'output', '/tmp/hf_model'),
                               dataset=_DATASET.value, step=_STEP.value)
    print(f"Exported step {result['step']} (head '{result['dataset']}', {result['num_labels']} "
          f"labels) to {result['output']}", flush=True)
    return
  if command == 'predict':
    from sparse_tubes import predict
    result = predict.predict(config, workdir, _need(_INPUT.value, 'input', 'video.mp4'),
                             top_k=_TOP_K.value, save_logits=_SAVE_LOGITS.value,
                             dataset=_DATASET.value, step=_STEP.value, fps=_FPS.value)
    print(predict.format_result(result), flush=True)
    return
  if command == 'train':
    from sparse_tubes.train import loop
    config, target = run.train_target(config, workdir)
    if target != workdir:
      print(f'{workdir} holds a converted checkpoint: training from it '
            f'(config.init_from.kind=checkpoint) into {target}', flush=True)
      workdir = target
    from sparse_tubes.train import nonfinite, workdir_lock
    try:
      summary = loop.train(config, workdir)
    except (nonfinite.NonFiniteError, workdir_lock.WorkdirLocked, run.CheckpointError) as e:
      raise SystemExit(f'Error: {e}') from None  # One line and a non-zero exit code.
    print(f"Trained to step {summary['step']}; checkpoints in {os.path.join(workdir, 'checkpoints')}",
          flush=True)
  elif command == 'evaluate':
    from sparse_tubes import evaluate
    try:
      checkpoint = evaluate.parse_checkpoint(_CHECKPOINT.value, _STEP.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    try:
      evaluate.evaluate_checkpoints(
          config, workdir, checkpoint, force=_FORCE.value, watch_timeout=_WATCH_TIMEOUT.value,
          save_predictions=_SAVE_PREDICTIONS.value,
          on_result=lambda s: print(evaluate.results_table(s), flush=True))
    except (run.CheckpointError, FileNotFoundError) as e:
      raise SystemExit(f'Error: {e}') from None


def check_overrides(argv) -> None:
  """Exits with one line naming a mistyped `--config.a.b=value` key, before absl parses the flags
  (its parser fails on one with a page of traceback)."""
  args = argv[1:]
  spec = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), None)
  if spec is None and '--config' in args[:-1]:
    spec = args[args.index('--config') + 1]
  keys = [a[len('--config.'):].split('=', 1)[0] for a in args if a.startswith('--config.')]
  if not spec or not keys:
    return
  from sparse_tubes import config as config_lib
  try:
    config = config_lib.load(spec)
  except Exception:  # noqa: BLE001 - a config that does not load: absl's parser reports it
    return
  for key in keys:
    try:
      config_lib.check_override(config, key)
    except ValueError as e:
      raise SystemExit(str(e)) from None


def run():
  check_overrides(sys.argv)
  app.run(main)


if __name__ == '__main__':
  run()
