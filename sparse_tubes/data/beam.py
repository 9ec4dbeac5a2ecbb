"""`prepare` on Apache Beam: the same builder, its clips decoded by Beam workers.

`prepare DATASET --beam_runner=DirectRunner|DataflowRunner|SparkRunner|FlinkRunner
--beam_options="--project=... --region=..."` runs `VideoBuilder` through TFDS's Beam path: each
split's `_generate_examples` is a `beam.PTransform` (`split_examples`) instead of the two local phases
of video_builder.py, and TFDS's `BeamWriter` shuffles by the same hashed keys and writes the
ArrayRecord shards. Per clip it runs `video_io.decode_clip`, the function the one-machine path runs,
so the examples are the same ones, in the same order (shard boundaries can differ: TFDS sizes Beam
shards from estimates).

Failures leave the workers through a tagged output: a `CombineFn` folds each split's per-clip
records (CLIPS) into one summary (videos, written, frames, failures) that a single step writes into the work
directory; after the pipeline the builder assembles `prepare_report.json` from those summaries with
the same `make_report` as the local path. Beam counters (`prepare/<split>/written`,
`prepare/<split>/<reason>`) show the same counts live in the Dataflow or Spark UI.

A Beam run does not resume from an earlier one: the runner retries failed work itself (Dataflow up
to 4 times per bundle), and a failed job starts again from the beginning.

The release and the output can be on GCS (gs://...; S3 and HDFS alike through Beam's file systems)
as Dataflow workers need: the listing and annotation files go through `FileSystems`, each clip is
copied to a local temporary file before decoding, and ArrayRecord shards (whose writer only knows
local files) are written locally and then copied (`RemoteArrayRecordWriter`). Without TensorFlow,
TFDS reaches gs:// through etils.epath, which needs `gcsfs`.
"""
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import shutil
import tempfile

# Without apache-beam[gcp], importing Beam logs a warning about BigQuery's client ("apitools not
# found"), which prepare does not use.
logging.disable(logging.WARNING)
try:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
finally:
  logging.disable(logging.NOTSET)
from tensorflow_datasets.core import writer as writer_lib

from sparse_tubes.data import video_io

CLIPS = 'clips'  # The tagged output of (index, frames, failure or None), one per listed clip.
RAW = CompressionTypes.UNCOMPRESSED  # Beam would otherwise guess a compression from the name.
RUNNERS = ('DirectRunner', 'DataflowRunner', 'SparkRunner', 'FlinkRunner', 'PortableRunner',
           'PrismRunner')


def pipeline_options(beam_runner: str, beam_options: str, workers: int | None) -> PipelineOptions:
  """`--beam_options` (one string of Beam flags) as PipelineOptions; on the DirectRunner,
  `--workers` processes unless the options say otherwise."""
  if beam_runner not in RUNNERS:
    raise ValueError(f'--beam_runner={beam_runner!r} is not one of {RUNNERS}.')
  try:
    args = shlex.split(beam_options or '')
  except ValueError as e:
    raise ValueError(f'--beam_options={beam_options!r} cannot be split into flags: {e}') from None
  bad = [a for a in args if not a.startswith('--')]
  if bad:
    raise ValueError(f'--beam_options: {bad} are not Beam flags; write them as '
                     f'--beam_options="--project=P --region=R ...".')
  if beam_runner == 'DirectRunner' and not any(a.startswith('--direct_') for a in args):
    n = workers or os.cpu_count() or 1
    if n > 1:  # The DirectRunner's default is one thread in this process.
      args += [f'--direct_num_workers={n}', '--direct_running_mode=multi_processing']
  return PipelineOptions(args)


# ------------------------------------------------------------------------------ remote files

def is_remote(path) -> bool:
  return '://' in os.fspath(path)


@contextlib.contextmanager
def local_copy(path: str):
  """`path` as a local file: itself, or (gs://, s3://, ...) a temporary copy removed afterwards."""
  if not is_remote(path):
    yield path
    return
  fd, tmp = tempfile.mkstemp(prefix='sparse_tubes_clip_', suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, 'wb') as out, FileSystems.open(path, compression_type=RAW) as src:
      shutil.copyfileobj(src, out, 1 << 20)
    yield tmp
  finally:
    os.remove(tmp)


def remote_files(root: str) -> list[str]:
  """Every file below a gs://, s3://... folder (what `os.walk` gives for a local one)."""
  return [m.path for m in FileSystems.match([root.rstrip('/') + '/**'])[0].metadata_list]


class RemoteArrayRecordWriter(writer_lib.ExampleWriter):
  """TFDS's example writer, but a shard for gs://... is written to a local file and then copied:
  array_record's writer opens only local paths."""

  def write(self, path, examples):
    if not is_remote(path):
      return super().write(path, examples)
    fd, tmp = tempfile.mkstemp(suffix='.array_record')
    os.close(fd)
    try:
      keys = super().write(tmp, examples)
      with open(tmp, 'rb') as src, FileSystems.create(os.fspath(path),
                                                      compression_type=RAW) as out:
        shutil.copyfileobj(src, out, 1 << 20)
      return keys
    finally:
      os.remove(tmp)


# ---------------------------------------------------------------------------- the transforms

class DecodeClip(beam.DoFn):
  """A listed video -> (key, example) on the main output when it can be used, and for every video
  (index, frames, failure or None) on CLIPS, for the split's summary."""

  def __init__(self, cfg: dict, split: str):
    self.cfg, self.split = cfg, split

  def setup(self):
    self.counters = {}

  def count(self, name):
    if name not in self.counters:
      self.counters[name] = beam.metrics.Metrics.counter('prepare', f'{self.split}/{name}')
    self.counters[name].inc()

  def process(self, v: video_io.Video):
    if v.path and is_remote(v.path):
      try:
        with local_copy(v.path) as path:
          example, failure = video_io.decode_clip(dataclasses.replace(v, path=path), self.cfg)
        if failure:
          failure = {**failure, 'path': v.path,
                     'detail': failure['detail'].replace(path, v.path)}
      except Exception as e:  # Listed but unreadable (gone since, or no permission): skipped.
        example, failure = None, {'video_id': v.video_id, 'path': v.path, 'reason': 'missing',
                                  'detail': f'cannot read: {type(e).__name__}: {e}'}
    else:
      example, failure = video_io.decode_clip(v, self.cfg)
    if failure:
      self.count(failure['reason'])
      yield beam.pvalue.TaggedOutput(CLIPS, (v.index, 0, failure))
      return
    self.count('written')
    yield beam.pvalue.TaggedOutput(CLIPS, (v.index, len(example['video']), None))
    yield example['id'], example


class Summarize(beam.CombineFn):
  """(index, frames, failure) per clip -> one split summary, the shape of a local work shard's
  sidecar: {'videos', 'written', 'frames', 'failures' (in listing order)}."""

  def create_accumulator(self):
    return {'videos': 0, 'written': 0, 'frames': 0, 'failures': []}

  def add_input(self, acc, record):
    index, frames, failure = record
    acc['videos'] += 1
    if failure:
      acc['failures'].append((index, failure))
    else:
      acc['written'] += 1
      acc['frames'] += frames
    return acc

  def merge_accumulators(self, accs):
    out = self.create_accumulator()
    for a in accs:
      for k in ('videos', 'written', 'frames'):
        out[k] += a[k]
      out['failures'] += a['failures']
    return out

  def extract_output(self, acc):
    return {**acc, 'failures': [f for _, f in sorted(acc['failures'], key=lambda x: x[0])]}


def write_json(summary: dict, path: str):
  with FileSystems.create(path) as f:
    f.write(json.dumps(summary).encode())


def summary_path(work_dir: str, split: str) -> str:
  return os.path.join(work_dir, f'{split}-beam.json')


def _video(line: str) -> video_io.Video:
  return video_io.Video(**json.loads(line))


def split_examples(videos: list, cfg: dict, split: str, work_dir: str) -> beam.PTransform:
  """The `_generate_examples` of one split on Beam: (key, example) pairs, keys as on one machine;
  the split's summary goes to `summary_path(work_dir, split)`.

  The video list travels as a file in the work directory that the workers read, not inside the
  pipeline: 650,000 rows would make a job graph of about 100 MB, and Dataflow takes 10 MB."""
  listing = os.path.join(work_dir, f'{split}-videos.jsonl')
  with FileSystems.create(listing) as f:
    for v in videos:
      f.write((json.dumps(dataclasses.asdict(v)) + '\n').encode())

  @beam.ptransform_fn
  def expand(root):
    decoded = (root
               | 'List' >> beam.io.ReadFromText(listing)
               | 'Parse' >> beam.Map(_video)
               # One clip per element, spread over the workers: a text source hands a runner
               # few large bundles, and a clip costs a second or more.
               | 'Spread' >> beam.Reshuffle()
               | 'Decode' >> beam.ParDo(DecodeClip(cfg, split)).with_outputs(CLIPS,
                                                                             main='examples'))
    _ = (decoded[CLIPS]
         | 'Summarize' >> beam.CombineGlobally(Summarize())
         | 'WriteSummary' >> beam.Map(write_json, path=summary_path(work_dir, split)))
    return decoded.examples

  return expand()  # pylint: disable=no-value-for-parameter


def read_summaries(work_dir: str, splits) -> dict:
  """{split: [summary]} as the pipeline wrote them."""
  out = {}
  for split in splits:
    with FileSystems.open(summary_path(work_dir, split)) as f:
      out[split] = [json.loads(f.read())]
  return out
