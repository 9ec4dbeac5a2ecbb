"""Kinetics-400/600/700 as the CVDF release lays them out (github.com/cvdfoundation/kinetics-dataset).

  manual_dir/
    annotations/{train,val,test}.csv   header: label,youtube_id,time_start,time_end,split[,is_cc]
    .../{youtube_id}_{time_start:06d}_{time_end:06d}.mp4   anywhere below manual_dir

The class list is the sorted set of labels in train.csv: every class has training clips, and the
published class lists (e.g. DeepMind's kinetics label maps) are exactly these names in alphabetical
order, so label k means the k-th published class. The splits are 'train', 'validation' (val.csv, or
validate.csv in older releases) and 'test' when its CSV carries labels (the Kinetics-700 test labels
were never published: a split without labels is left out, with a message).
"""
import csv
import os

from sparse_tubes.data import video_builder
from sparse_tubes.data.video_io import Video

SPLIT_FILES = {'train': ('train.csv',), 'validation': ('val.csv', 'validate.csv', 'validation.csv'),
               'test': ('test.csv',)}

INSTRUCTIONS = """\
Download Kinetics with the CVDF scripts (github.com/cvdfoundation/kinetics-dataset), extract the
archives, and pass the folder holding `annotations/` and the clips as --manual_dir. Clips are found by
name ({youtube_id}_{time_start:06d}_{time_end:06d}.mp4) anywhere under it."""


def clip_name(youtube_id: str, time_start, time_end) -> str:
  return f'{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}'


def read_csv(path: str) -> list[dict]:
  with video_builder.open_text(path) as f:
    rows = list(csv.DictReader(f))
  required = {'youtube_id', 'time_start', 'time_end'}
  if rows and not required <= set(rows[0]):
    raise ValueError(f'{path} lacks the columns {sorted(required - set(rows[0]))}: expected the '
                     f'official header label,youtube_id,time_start,time_end,split.')
  return rows


class _Kinetics(video_builder.VideoBuilder, skip_registration=True):
  """Kinetics human action clips (about 10 s each), JPEG frames at 25 fps, short side 256."""

  HOMEPAGE = 'https://github.com/cvdfoundation/kinetics-dataset'
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def list_videos(self, manual_dir):
    csvs = {}
    for split, names in SPLIT_FILES.items():
      for n in names:
        path = video_builder.find_file(manual_dir, n)
        if path:
          csvs[split] = path
          break
    if 'train' not in csvs:
      raise ValueError(f'No annotations/train.csv under {manual_dir!r}. {INSTRUCTIONS}')
    rows = {split: read_csv(path) for split, path in csvs.items()}
    names = sorted({r['label'] for r in rows['train'] if r.get('label')})
    lookup = {n: i for i, n in enumerate(names)}
    files = video_builder.index_files(manual_dir)
    splits = {}
    for split, split_rows in rows.items():
      if not all(r.get('label') for r in split_rows):
        print(f'{self.name}: {csvs[split]} has rows without labels; the {split!r} split is left out.')
        continue
      videos = []
      for i, r in enumerate(split_rows):
        vid = clip_name(r['youtube_id'], r['time_start'], r['time_end'])
        videos.append(Video(index=i, video_id=vid, label=lookup.get(r['label']),
                            label_name=r['label'], path=files.get(vid)))
      splits[split] = videos
    return names, splits


class Kinetics400(_Kinetics):
  """Kinetics-400 (Kay et al. 2017): 400 classes."""


class Kinetics600(_Kinetics):
  """Kinetics-600 (Carreira et al. 2018): 600 classes."""


class Kinetics700(_Kinetics):
  """Kinetics-700 (Carreira et al. 2019; 2020 release): 700 classes."""
