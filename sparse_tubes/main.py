"""Command line.

  python -m sparse_tubes train    --config=CONFIG.py[:arg] --workdir=DIR
  python -m sparse_tubes evaluate --config=CONFIG.py[:arg] --workdir=DIR
                                  [--checkpoint=latest|STEP|all|watch] [--force]
                                  [--watch_timeout=S] [--save_predictions=FILE.npz]
                                  [--params=auto|ema|raw] [--view_grid] [--reference_ids=FILE]
  python -m sparse_tubes info     --config=CONFIG.py[:arg] [--json]
  python -m sparse_tubes prepare  DATASET --manual_dir=DIR [--data_dir=DIR] [--workers=N]
                                  [--beam_runner=DataflowRunner --beam_options="--project=P ..."]
  python -m sparse_tubes convert  --from=hf|timesformer|vit_npz --input=PATH [--config=...] --workdir=DIR
  python -m sparse_tubes convert  --to=hf --workdir=DIR --output=HF_DIR [--dataset=NAME] [--step=N]
  python -m sparse_tubes plan     --config=CONFIG.py[:arg] --topology=v5e:4x4 [--num_slices=2]
                                  [--dcn_gbps=25] [--quick] [--json]
  python -m sparse_tubes predict  --workdir=DIR --input=VIDEO|CLIPS.npy [--config=...] [--top_k=5]
                                  [--save_logits=OUT.npy] [--dataset=NAME] [--step=N] [--fps=F]
  python -m sparse_tubes predict  --workdir=DIR --input=VIDEO --segments=SECONDS[:STRIDE]
                                  [--output=OUT.json]
  python -m sparse_tubes features --workdir=DIR --split=DATASET[:SPLIT] --output=DIR [--per_view]
  python -m sparse_tubes features --workdir=DIR --input=VIDEO|FOLDER --output=DIR [--per_view]
  python -m sparse_tubes convert  --to=onnx --workdir=DIR --output=model.onnx [--dataset=NAME]
  python -m sparse_tubes bench    step|attention|data|zoo [--config=CONFIG.py[:arg]] [--json] ...
                                  (commands/bench.py lists the options)

Each command is one module of sparse_tubes/commands/ with a `main(flags, args)`; this file holds
the flags they share and dispatches.

  train, evaluate, predict, features (and convert --to) take --workdir alone when the workdir holds the
  config.json that `train` or `convert` wrote; --config=DIR/config.py loads the same config and
  takes --config.field overrides.

  --config=configs/synthetic/tubevit_tiny.py:arg   reaches get_config(arg)
  --config.total_steps=100                         overrides a field (unknown fields are errors)

  train and evaluate start the multi-host runtime themselves on a TPU pod, GKE or SLURM; elsewhere
  give --coordinator_address, --num_processes and --process_id (launch/local.py does).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ('train', 'evaluate', 'predict', 'features', 'info', 'plan', 'bench', 'prepare',
            'convert')
POSITIONAL = ('prepare', 'bench')  # commands that take words besides flags

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
_PARAMS = flags.DEFINE_enum(
    'params', 'auto', ['auto', 'ema', 'raw'], 'evaluate: the moving average of the parameters '
    '(ema, kept with config.ema_decay) or the weights (raw); auto: ema when the checkpoint has it.')
_VIEW_GRID = flags.DEFINE_bool('view_grid', False, 'evaluate: also top-1 and GFLOPs of every '
                               'sub-grid t x s of the eval views, from one pass (DIR/eval/..._views.json).')
_REFERENCE_IDS = flags.DEFINE_string(
    'reference_ids', None, 'evaluate: a file of official split ids (one per line, or an official '
    'Kinetics CSV): accuracy on the videos both evaluated and listed, and the count missing.')
_JSON = flags.DEFINE_bool('json', False, 'info, plan, bench: print JSON instead of tables.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'prepare: where the downloaded dataset is.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'prepare: TFDS data dir to write (default: '
                                '$SPARSE_TUBES_DATA_DIR or ~/.cache/sparse_tubes/tfds).')
_WORKERS = flags.DEFINE_integer('workers', None, 'prepare, bench data: parallel decoding '
                                'processes (default: the number of cores).')
_BEAM_RUNNER = flags.DEFINE_string('beam_runner', None, 'prepare: decode on Apache Beam with this '
                                   'runner (DirectRunner, DataflowRunner, SparkRunner, ...; the '
                                   '[beam] extra; docs/prepare_on_beam.md).')
_BEAM_OPTIONS = flags.DEFINE_string('beam_options', '', 'prepare --beam_runner: Beam pipeline '
                                    'options as one string, e.g. "--project=P --region=R".')
_FROM = flags.DEFINE_enum('from', None, ['hf', 'timesformer', 'vit_npz'],
                          'convert: the kind of checkpoint --input is.')
_TO = flags.DEFINE_enum('to', None, ['hf', 'onnx'], 'convert: export the workdir checkpoint to this '
                        'layout.')
_INPUT = flags.DEFINE_string('input', None, 'convert: checkpoint path; predict: a video file or a '
                             '.npy clip batch (B,T,H,W,C float32); features: a video file or a '
                             'folder of them.')
_OUTPUT = flags.DEFINE_string('output', None, 'convert --to=hf: the directory to write; --to=onnx: '
                              'the .onnx file; features: the folder of shards; predict --segments: '
                              'the .json (a .csv beside it).')
_NUM_HEADS = flags.DEFINE_integer('num_heads', None, 'convert --from=timesformer: attention heads '
                                  '(not in the file; default hidden/64).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'predict: how many classes to print.')
_SAVE_LOGITS = flags.DEFINE_string('save_logits', None, 'predict: write the logits here (.npy).')
_DATASET = flags.DEFINE_string('dataset', None, 'predict, features, convert --to: which head '
                               '(dataset) to use (default: the first video dataset).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'train, evaluate: host:port of '
                                   'process 0, for a multi-process run jax cannot detect by itself.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'train, evaluate: processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'train, evaluate: this process, 0-based.')
_TOPOLOGY = flags.DEFINE_string('topology', None, 'plan: the TPU slice, e.g. v5e:4x4, v4:2x2x4, '
                                'v5p:2x4x4, v6e:4x4 (default: config.topology).')
_NUM_SLICES = flags.DEFINE_integer('num_slices', None, 'plan: that many slices of --topology joined '
                                   'over the data-centre network (default: config.mesh.slices); '
                                   'docs/multislice.md.')
_DCN_GBPS = flags.DEFINE_float('dcn_gbps', 25.0, 'plan --num_slices: data-centre network bandwidth '
                               "per chip, Gbit/s (default: v5e's 6.4 Tbps per 256-chip pod).")
_QUICK = flags.DEFINE_bool('quick', False, "plan: compile at XLA's lowest optimisation effort, "
                           '~5x faster; peak per chip within ~7% on the paper configs.')
_FPS = flags.DEFINE_float('fps', None, 'predict, features: frame rate to decode a video at '
                          "(default: the dataset's stored rate, 25 for Kinetics).")
_SEGMENTS = flags.DEFINE_string('segments', None, 'predict: SECONDS[:STRIDE]: top classes of each '
                                'segment of a long video, with start and end times.')
_SPLIT = flags.DEFINE_string('split', None, 'features: DATASET[:SPLIT], a prepared split of a '
                             'dataset of the config (SPLIT defaults to its eval_split).')
_PER_VIEW = flags.DEFINE_bool('per_view', False, "features: also keep every view's features.")
_VIDEOS_PER_SHARD = flags.DEFINE_integer('videos_per_shard', None, 'features: videos per output '
                                         'shard (default 1024); finished shards are skipped when '
                                         'a run resumes.')


# bench
_STEPS = flags.DEFINE_integer('steps', 5, 'bench step: timed steps (the median is reported).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'bench step: untimed steps after the compile.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, "bench step: global batch of every dataset "
                                   "(default: the config's).")
_WITH_DATA = flags.DEFINE_bool('with_data', False, "bench step: also run the loop on the config's "
                               'input pipeline and report how much of each step waits for data.')
for _key in ('attention_impl', 'scan_layers', 'remat', 'dtype'):
  flags.DEFINE_string(_key, None, f'bench step: config.model.{_key}; a comma-separated list '
                      'compares them, one row each.')
_SECONDS = flags.DEFINE_float('seconds', 3.0, 'bench data: seconds per measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'bench data: measurements per figure.')
_MINI = flags.DEFINE_bool('mini', False, 'bench data: use mini releases even where the dataset '
                          'is prepared.')
_SYNTHETIC = flags.DEFINE_bool('synthetic', None, 'bench data: also measure synthetic reference '
                               'clips (default: with the table, not with --json).')
_TOKENS = flags.DEFINE_string('tokens', '3137,12544', 'bench attention: sequence lengths.')
_HEADS = flags.DEFINE_integer('heads', 16, 'bench attention: heads.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 64, 'bench attention: head dimension.')
_BATCH = flags.DEFINE_integer('batch', None, 'bench attention: global batch (default: one per chip).')
_WITH_TORCH = flags.DEFINE_bool('with_torch', False, 'bench zoo: also time the HF PyTorch '
                                'TimeSformer-B and ViViT-B (scripts/bench_hf_torch.py).')
_TINY = flags.DEFINE_bool('tiny', False, 'bench zoo: the synthetic tiny configs instead of the paper '
                          'configs (for a CPU).')


def main(argv):
  import importlib
  args = argv[1:]
  if not args or args[0] not in COMMANDS:
    raise app.UsageError(f'Give a command, one of {COMMANDS}; got {args[0] if args else "none"}.')
  command, rest = args[0], args[1:]
  if command not in POSITIONAL and rest:
    raise app.UsageError(f'Unexpected arguments {rest}: flags are written --name=value.')
  if not flags.FLAGS['verbosity'].present:
    # Progress lines and results are printed; library INFO logs (TFDS, Orbax) would bury them,
    # and so would Orbax warnings about its own bookkeeping (distributed.quiet_library_logs).
    logging.set_verbosity(logging.WARNING)
    from sparse_tubes import distributed
    distributed.quiet_library_logs()
  importlib.import_module(f'sparse_tubes.commands.{command}').main(flags.FLAGS, rest)


def check_overrides(argv) -> None:
  """Exits with one line naming a config file that does not load (file, line, error) or a mistyped
  `--config.a.b=value` key, before absl parses the flags (its parser fails on either with a page
  of traceback)."""
  args = argv[1:]
  spec = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), None)
  if spec is None and '--config' in args[:-1]:
    spec = args[args.index('--config') + 1]
  keys = [a[len('--config.'):].split('=', 1)[0] for a in args if a.startswith('--config.')]
  if not spec:
    return
  from sparse_tubes import config as config_lib
  try:
    config = config_lib.load(spec)
  except Exception as e:  # noqa: BLE001 - whatever the file raises, one line says where
    raise SystemExit(f'Error: {config_lib.load_error(spec, e)}') from None
  for key in keys:
    try:
      config_lib.check_override(config, key)
    except ValueError as e:
      raise SystemExit(str(e)) from None


def run():
  from sparse_tubes import distributed
  distributed.quiet_libtpu()  # Before JAX starts a backend.
  check_overrides(sys.argv)
  app.run(main)


if __name__ == '__main__':
  run()
