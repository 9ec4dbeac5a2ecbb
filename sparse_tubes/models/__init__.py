"""Models: tokenizer (patches / tubelets / sparse tubes) -> encoder -> heads.

Import the modules themselves (`from sparse_tubes.models import video_vit`): this package file
imports none of them, so that `config` can check model keys against their choices without an
import circle through `video_vit`, which reads the checked config.
"""
