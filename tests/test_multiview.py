"""Multi-view evaluation's numbers: top-k with ties, the per-class table and confusion pairs, and
results on an official list of video ids (every sub-grid against separate evaluations:
test_view_grid.py)."""
import numpy as np
import pytest

from sparse_tubes import multiview


def predictions(scores, labels, keys=None):
  n = len(labels)
  return multiview.Predictions(index=np.arange(n), key=keys or [f'v{i}' for i in range(n)],
                               label=np.array(labels), scores=np.array(scores, np.float32),
                               aggregation='logits')


def test_topk_breaks_ties_by_the_lower_index():
  scores = np.array([[0.1, 0.5, 0.5, 0.0], [0.9, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2]])
  labels = np.array([2, 3, 1])
  np.testing.assert_array_equal(multiview.topk_correct(scores, labels, 1), [False, False, False])
  np.testing.assert_array_equal(multiview.topk_correct(scores, labels, 2), [True, False, True])
  assert multiview.topk_accuracy(scores, labels, 10) == 1.0  # k beyond the classes: all of them
  assert multiview.topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)


def test_softmax_is_stable():
  p = multiview.softmax(np.array([[1000.0, 1000.0, -np.inf], [0.0, np.log(3.0), 0.0]]))
  np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.2, 0.6, 0.2]], rtol=1e-6)


def test_class_table_and_most_confused():
  pred = predictions([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]], [0, 0, 1, 2, 2])
  per_class, correct, confusion = multiview.class_table(pred, 3)
  np.testing.assert_array_equal(per_class, [2, 1, 2])
  np.testing.assert_array_equal(correct, [1, 1, 1])
  assert confusion.sum() == 5 and confusion[0, 1] == 1 and confusion[2, 1] == 1
  confusion[2, 1] = 3
  assert multiview.most_confused(confusion, ['a', 'b', 'c'], n=5) == [
      {'label': 'c', 'predicted': 'b', 'videos': 3}, {'label': 'a', 'predicted': 'b', 'videos': 1}]


def test_read_reference_ids(tmp_path):
  plain = tmp_path / 'ids.txt'
  plain.write_text('# the official list\nb\n\na\nb\n')
  assert multiview.read_reference_ids(str(plain)) == ['b', 'a']  # order kept, duplicates once
  csv = tmp_path / 'val.csv'
  csv.write_text('label,youtube_id,time_start,time_end,split\nx,abc,3,13,val\ny,def,0.0,10.0,val\n')
  assert multiview.read_reference_ids(str(csv)) == ['abc_000003_000013', 'def_000000_000010']
  with pytest.raises(FileNotFoundError, match='no such file'):
    multiview.read_reference_ids(str(tmp_path / 'none.txt'))
  (tmp_path / 'empty.txt').write_text('# nothing\n')
  with pytest.raises(ValueError, match='lists no video ids'):
    multiview.read_reference_ids(str(tmp_path / 'empty.txt'))


def test_reference_results_compare_like_for_like():
  pred = predictions([[1, 0], [1, 0], [0, 1]], [0, 1, 1], keys=['a', 'b', 'c'])
  out, common = multiview.reference_results(pred, ['c', 'a', 'z', 'y'], num_classes=2)
  assert common == ['c', 'a']
  assert out == {'reference_ids': 4, 'evaluated': 2, 'missing': 2, 'missing_fraction': 0.5,
                 'not_in_reference': 1, 'top1': 1.0, 'top5': 1.0, 'mean_class_accuracy': 1.0}
  out, common = multiview.reference_results(pred, ['z'], num_classes=2)
  assert common == [] and out['missing'] == 1 and 'top1' not in out
