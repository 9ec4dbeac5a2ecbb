"""Something-Something v2 as released by 20BN / Qualcomm.

  manual_dir/  (files found by name anywhere below)
    something-something-v2-{train,validation}.json   [{"id", "label", "template", "placeholders"}]
    something-something-v2-labels.json               {"Approaching something with your camera": "0", ...}
    {id}.webm                                        (20bn-something-something-v2/ once extracted)

The label of a video is its template with the brackets removed ("Pushing [something] from left to
right" -> "Pushing something from left to right"), looked up in the labels file, which is how the
official label indices are defined. Splits 'train' and 'validation' (the test JSON has no labels).
SSv2 videos are 12 fps (VP9, 240 px high): the default config keeps the native rate ('native_256px');
flips change labels here, so leave flip=False in configs.
"""
import json

from sparse_tubes.data import video_builder
from sparse_tubes.data.video_io import Video

INSTRUCTIONS = """\
Download Something-Something v2 (the 20bn-something-something-v2-?? parts and the labels archive),
extract them, and pass the folder as --manual_dir. The JSON files and the {id}.webm clips are found by
name anywhere under it."""

SPLITS = {'train': 'something-something-v2-train.json',
          'validation': 'something-something-v2-validation.json'}
LABELS = 'something-something-v2-labels.json'


def template_label(template: str) -> str:
  return template.replace('[', '').replace(']', '')


class Ssv2(video_builder.VideoBuilder):
  """Something-Something v2: 174 classes of hand-object interactions; frames at the native 12 fps."""

  HOMEPAGE = 'https://www.qualcomm.com/developer/software/something-something-v-2-dataset'
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  BUILDER_CONFIGS = [video_builder.make_config(None, 256)]

  def list_videos(self, manual_dir):
    path = video_builder.find_file(manual_dir, LABELS)
    if not path:
      raise ValueError(f'No {LABELS} under {manual_dir!r}. {INSTRUCTIONS}')
    with video_builder.open_text(path) as f:
      label_map = {name: int(i) for name, i in json.load(f).items()}
    names = sorted(label_map, key=label_map.get)
    if [label_map[n] for n in names] != list(range(len(names))):
      raise ValueError(f'{path}: label indices are not 0..{len(names) - 1}.')
    files = video_builder.index_files(manual_dir)
    splits = {}
    for split, name in SPLITS.items():
      path = video_builder.find_file(manual_dir, name)
      if not path:
        print(f'{self.name}: no {name} under {manual_dir}; the {split!r} split is left out.')
        continue
      with video_builder.open_text(path) as f:
        entries = json.load(f)
      videos = []
      for i, e in enumerate(entries):
        vid = str(e['id'])
        label = template_label(e.get('template', e.get('label', '')))
        videos.append(Video(index=i, video_id=vid, label=label_map.get(label), label_name=label,
                            path=files.get(vid)))
      splits[split] = videos
    if 'train' not in splits:
      raise ValueError(f'No {SPLITS["train"]} under {manual_dir!r}. {INSTRUCTIONS}')
    return names, splits
