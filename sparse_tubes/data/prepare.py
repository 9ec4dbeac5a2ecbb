"""`python -m sparse_tubes prepare DATASET --manual_dir=DIR [--data_dir=DIR] [--workers=N]
[--beam_runner=DirectRunner|DataflowRunner|SparkRunner --beam_options="--project=P ..."]`.

Turns Kinetics-400/600/700 (the CVDF release layout) or Something-Something v2 (the 20BN/Qualcomm
release) into a TFDS dataset in ArrayRecord format that `pipeline` reads like the built-in one:
JPEG frames in `Sequence(Image)` (`builtin.video_features`) plus `video_id` (the original id string),
`fps` (stored frame rate), `source_fps` and `duration` (seconds).

DATASET is a name from DATASETS, optionally with a config `NAMEfps_SIZEpx` (`kinetics400/10fps_128px`,
`ssv2/native_256px`); without one, Kinetics is resampled to 25 fps and SSv2 keeps its native 12 fps,
both with the short side at 256. Read it back with `tfds_name='kinetics400'` (or `'kinetics400/10fps_128px'`).

Two phases, so an interrupted run loses little:
1. Decode (the expensive part, in `workers` processes): the videos of each split are cut into work
   shards of `videos_per_shard`; each shard is decoded into `<data_dir>/<name>/<config>/_work/` as an
   ArrayRecord file of finished examples plus a JSON sidecar of its failures, written atomically (the
   sidecar last). A re-run skips every shard whose sidecar exists.
2. Write (one process, I/O bound): the TFDS `GeneratorBasedBuilder` reads the work shards in order and
   TFDS writes, shuffles by key and finalises the ArrayRecord dataset. TFDS's own writer keeps nothing
   across an interruption (it writes into a temporary directory it renames at the end), which is why
   phase 1 keeps its own shards. `_work` is deleted once the dataset is complete.

On Apache Beam (`--beam_runner`, the `[beam]` extra; data/beam.py) the two phases are one pipeline:
the runner's workers decode one clip per element with the same per-clip function, TFDS's Beam writer
writes the same ArrayRecord dataset, and the report is assembled from the workers' summaries. There
is no resuming across runs; the runner retries failed work itself. docs/prepare_on_beam.md has the
Dataflow command for Kinetics-700.

Every video it could not use (missing, undecodable, no video stream, zero frames, truncated, label not
in the class list) is skipped, counted and listed with its reason in `<data_dir>/<name>/<config>/
prepare_report.json`; nothing is fatal but a missing annotation file.

The builders of each release are in kinetics.py and ssv2.py, their shared machinery (the phases
above) in video_builder.py; this module picks the builder and runs it.
"""
import json
import os
import time

from etils import epath
import tensorflow_datasets as tfds

from sparse_tubes.data import builtin, kinetics, ssv2
from sparse_tubes.data.video_builder import make_config, parse_config_name


BUILDERS = {'kinetics400': kinetics.Kinetics400, 'kinetics600': kinetics.Kinetics600,
            'kinetics700': kinetics.Kinetics700, 'ssv2': ssv2.Ssv2}
DATASETS = tuple(BUILDERS)


def make_builder(name: str, data_dir: str, *, fps=..., short_side=...):
  """The builder of 'NAME' or 'NAME/CONFIG' (CONFIG like '10fps_128px') under data_dir."""
  base, _, config = name.partition('/')
  if base not in DATASETS:
    raise ValueError(f'Unknown dataset {base!r}: prepare one of {DATASETS}.')
  cls = BUILDERS[base]
  default = cls.BUILDER_CONFIGS[0]
  if config:
    parsed = parse_config_name(config)
    fps = parsed[0] if fps is ... else fps
    short_side = parsed[1] if short_side is ... else short_side
  fps = default.fps if fps is ... else fps
  short_side = default.short_side if short_side is ... else short_side
  cfg = make_config(fps, short_side)
  known = {c.name for c in cls.BUILDER_CONFIGS}
  return cls(data_dir=data_dir, config=cfg.name if cfg.name in known else cfg)


def run(name: str, *, manual_dir: str, data_dir: str | None, workers: int | None,
        fps=..., short_side=..., videos_per_shard: int | None = None,
        keep_work: bool = False, beam_runner: str | None = None, beam_options: str = '') -> dict:
  """Prepares dataset `name` ('kinetics400', 'ssv2/native_256px', ...); returns the report.

  Re-running continues an interrupted run; on a prepared dataset it only prints the report.
  With `beam_runner` ('DirectRunner', 'DataflowRunner', ...) the clips are decoded on Apache Beam
  (data/beam.py; `beam_options` is one string of Beam flags); the result is the same."""
  data_dir = builtin.resolve_data_dir(data_dir or '')
  manual_dir = os.path.expanduser(manual_dir)
  if beam_options and not beam_runner:
    raise ValueError('--beam_options needs --beam_runner (DirectRunner, DataflowRunner, ...).')
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  if beam_runner:
    try:
      from sparse_tubes.data import beam  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(f'--beam_runner needs Apache Beam ({e}): pip install '
                       f"'sparse_tubes[beam]' (and 'apache-beam[gcp]' gcsfs for Dataflow).") from None
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, beam_runner=beam_runner,
        beam_options=beam.pipeline_options(beam_runner, beam_options, workers))
    local = [f'--{k}={v}' for k, v in (('manual_dir', manual_dir), ('data_dir', data_dir))
             if not beam.is_remote(v)]
    if beam_runner == 'DataflowRunner' and local:
      raise ValueError(f'{" and ".join(local)}: Dataflow workers cannot read this machine\'s '
                       f'disk; put the release and the output on GCS (gs://BUCKET/...).')
  if not epath.Path(manual_dir).is_dir():
    raise ValueError(f'--manual_dir={manual_dir!r} is not a directory.')
  builder = make_builder(name, data_dir, fps=fps, short_side=short_side)
  builder.workers = workers
  builder.keep_work = keep_work
  builder.beam = bool(beam_runner)
  if videos_per_shard:
    builder.videos_per_shard = videos_per_shard
  title = f'{builder.name}/{builder.builder_config.name}'
  if builder.is_prepared():
    print(f'{title} is already prepared in {builder.data_dir}.')
  else:
    tfds.disable_progress_bar()  # Our progress line says more than TFDS's per-split bars.
    start = time.perf_counter()
    builder.download_and_prepare(file_format='array_record', download_config=download_config)
    print(f'{title}: done in {time.perf_counter() - start:.1f} s -> {builder.data_dir}')
    if not keep_work and epath.Path(builder.work_dir).exists():
      epath.Path(builder.work_dir).rmtree()
  report = json.loads(epath.Path(builder.report_path).read_text())
  for split, c in report['splits'].items():
    reasons = ', '.join(f'{k} {v}' for k, v in sorted(c['reasons'].items())) or 'none'
    print(f'  {split}: {c["written"]}/{c["videos"]} videos written ({c["frames"]} frames); '
          f'unusable: {reasons}')
  tfds_name = builder.name if builder.builder_config.name == builder.BUILDER_CONFIGS[0].name \
      else f'{builder.name}/{builder.builder_config.name}'
  print(f'  report: {builder.report_path}; read it with tfds_name={tfds_name!r}')
  return report
