"""Models: tokenizer (patches / tubelets / sparse tubes) -> encoder -> heads."""
from sparse_tubes.models.tokenizers import SparseTubes, count_tokens, tube_grid, validate_tubes
from sparse_tubes.models.video_vit import VideoViT, build_model

__all__ = ['SparseTubes', 'VideoViT', 'build_model', 'count_tokens', 'tube_grid',
           'validate_tubes']
