"""Data: TFDS builders (array_record, JPEG frames, no TensorFlow) and Grain pipelines.

  builtin     the moving-shapes dataset; `ensure_built` / `resolve_data_dir` for every dataset
  pipeline    train iterators (checkpointable), multi-view eval batches, config validation
  transforms  JPEG decoding, temporal sampling, crops/resizes/flips, normalisation (numpy + cv2)
"""
