"""Every notebook in notebooks/ runs top to bottom, with tiny settings, and draws at least one figure.

The notebooks are stored without outputs. Each has one cell tagged `parameters` holding its defaults
(laptop-sized); as papermill does, the test injects a cell right after it that makes the settings tiny
and points the data at the session's tiny built-in dataset ($SPARSE_TUBES_DATA_DIR).
"""
import os
import pathlib

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / 'notebooks'
TINY_DATA = "DATA_DIR = os.environ['SPARSE_TUBES_DATA_DIR']\n"
FAST = {
    'tubes': TINY_DATA + "TFDS_NAME = 'moving_shapes/video_tiny'\n",
    'attention_patterns': "PAPER_CONFIGS = {'divided': 'kinetics400/timesformer_divst.py'}\n",
    'train_and_evaluate': TINY_DATA + (
        "VIDEO, IMAGE = 'moving_shapes/video_tiny', 'moving_shapes/image_tiny'\n"
        "STEPS, EVAL_EVERY = 40, 20\n"
        "OVERRIDES = ['--config.model.hidden_size=24', '--config.model.num_layers=2', "
        "'--config.model.num_heads=2', '--config.model.mlp_dim=48', "
        "'--config.datasets.shapes_video.batch_size=8', '--config.datasets.shapes_image.batch_size=8']\n"
        "WORKDIR = os.environ['SPARSE_TUBES_NB_WORKDIR']\n"),
    'pretrained': "WORKDIR = os.environ['SPARSE_TUBES_NB_WORKDIR']\n",
    # The paper configs' plans run in tests/commands/test_plan.py; here a tiny one on a small slice.
    'plan_a_pod_job': "CONFIGS = ['synthetic/timesformer_tiny.py']\nTOPOLOGY = 'v5e:2x2'\n",
}


def test_every_notebook_is_tested():
  assert sorted(p.stem for p in NOTEBOOKS.glob('*.ipynb')) == sorted(FAST)


def test_notebooks_are_stored_without_outputs():
  for path in NOTEBOOKS.glob('*.ipynb'):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
      if cell.cell_type == 'code':
        assert not cell.outputs and cell.execution_count is None, f'{path.name}: clear its outputs'


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FAST))
def test_notebook_runs_and_draws(name, tiny_data_dir, tmp_path, monkeypatch):
  if name == 'pretrained':
    pytest.importorskip('transformers')   # the [torch] extra
  monkeypatch.setenv('SPARSE_TUBES_DATA_DIR', tiny_data_dir)   # the kernel inherits the environment
  monkeypatch.setenv('SPARSE_TUBES_NB_WORKDIR', str(tmp_path))
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
  monkeypatch.delenv('MPLBACKEND', raising=False)               # the inline backend emits PNGs
  nb = nbformat.read(NOTEBOOKS / f'{name}.ipynb', as_version=4)
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, f'{name}: tag exactly one cell `parameters`'
  nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell('import os\n' + FAST[name]))
  # Raises CellExecutionError, naming the cell, if any cell raises.
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(NOTEBOOKS)}}).execute()
  pngs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
          if 'image/png' in o.get('data', {})]
  assert pngs, f'{name} drew no figure'
