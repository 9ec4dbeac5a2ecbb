"""The datasets of a config: where they are, their TFDS infos and class counts, their train
iterators. Shared by training, evaluation, `info`, `plan` and `bench`."""
import jax

from sparse_tubes import zoo
from sparse_tubes.data import builtin, pipeline


def data_dir(config) -> str:
  return builtin.resolve_data_dir(config.data_dir)


def dataset_infos(config) -> tuple[str, dict[str, pipeline.DatasetInfo]]:
  """(data dir, {dataset: DatasetInfo}); builds the built-in dataset if needed and fails with the
  fix when a dataset is missing."""
  root = data_dir(config)
  infos = {}
  for name, ds in config.datasets.items():
    builtin.ensure_built(ds.tfds_name, root)
    infos[name] = pipeline.dataset_info(ds, root)
  return root, infos


def train_iterators(config, data_dir: str) -> dict:
  """{dataset: this process's endless train iterator}, each at the start of its shuffled order."""
  return {n: pipeline.train_iterator(ds, data_dir=data_dir, seed=config.seed,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), grain_cfg=config.grain,
                                     name=n)
          for n, ds in config.datasets.items()}


def num_classes(config, infos: dict | None = None) -> dict[str, int]:
  """Classes per dataset: from `infos` (the data itself) when given, else `zoo.NUM_CLASSES` for
  the known names (no data needed), else the prepared dataset's TFDS info."""
  out = {}
  for name, ds in config.datasets.items():
    if infos is not None:
      out[name] = infos[name].num_classes
    elif ds.tfds_name in zoo.NUM_CLASSES:
      out[name] = zoo.NUM_CLASSES[ds.tfds_name]
    else:
      try:
        out[name] = pipeline.dataset_info(ds, data_dir(config)).num_classes
      except Exception as e:  # noqa: BLE001 - any failure means: we cannot know the class count
        raise ValueError(
            f'config.datasets.{name}.tfds_name={ds.tfds_name!r}: unknown number of classes. '
            f'Prepare the dataset, or add it to sparse_tubes.zoo.NUM_CLASSES. ({e})') from None
  return out
