"""The command line, as a user runs it."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'configs/synthetic/tubevit_tiny.py'


def cli(*args, timeout=600):
  return subprocess.run([sys.executable, '-m', 'sparse_tubes', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_override_is_rejected_in_one_line(tmp_path):
  proc = cli('train', f'--config={TINY}', '--config.model.hiden_size=3', f'--workdir={tmp_path}')
  assert proc.returncode != 0
  assert proc.stderr.strip() == ('Unknown config key config.model.hiden_size; did you mean '
                                 'config.model.hidden_size?')
  assert not os.listdir(tmp_path)   # nothing ran


def test_overrides_checked_against_the_config_file():
  from sparse_tubes import main
  main.check_overrides(['x', 'train', '--config', TINY, '--config.total_steps=3',
                        '--config.optimizer.learning_rate=0.1', '--config.model.tubes=()'])
  with pytest.raises(SystemExit, match=r'config\.optimizr; did you mean config\.optimizer\?'):
    main.check_overrides(['x', 'train', f'--config={TINY}', '--config.optimizr.learning_rate=1'])
  with pytest.raises(SystemExit, match=r'config\.datasets\.shapes_video\.batchsize'):
    main.check_overrides(['x', 'train', f'--config={TINY}',
                          '--config.datasets.shapes_video.batchsize=2'])


def test_missing_command_is_a_usage_error(tmp_path):
  proc = cli(f'--config={TINY}', f'--workdir={tmp_path}')
  assert proc.returncode != 0
  assert 'train' in proc.stderr and 'evaluate' in proc.stderr


@pytest.mark.slow
def test_train_then_evaluate(tiny_data_dir, tmp_path):
  overrides = [
      f'--config={TINY}', f'--workdir={tmp_path}', f'--config.data_dir={tiny_data_dir}',
      '--config.datasets.shapes_video.tfds_name=moving_shapes/video_tiny',
      '--config.datasets.shapes_image.tfds_name=moving_shapes/image_tiny',
      '--config.model.num_layers=1', '--config.model.hidden_size=24', '--config.model.num_heads=2',
      '--config.model.mlp_dim=32', '--config.total_steps=4', '--config.optimizer.warmup_steps=1',
      '--config.log_every_steps=2']
  train = cli('train', *overrides)
  assert train.returncode == 0, train.stderr[-3000:]
  assert 'steps/s' in train.stdout and 'ETA' in train.stdout
  assert os.path.isdir(tmp_path / 'checkpoints' / '4')
  ev = cli('evaluate', *overrides)
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert 'Evaluation of step 4' in ev.stdout
  assert 'shapes_video' in ev.stdout and '2x3' in ev.stdout
  assert (tmp_path / 'eval_results.json').exists()
