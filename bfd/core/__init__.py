"""Pure math of docs/method.md: numpy/torch in, arrays out. No Prefect, Zarr or DuckDB here."""

from bfd.core.anova import Means as Means
from bfd.core.anova import Pass1State as Pass1State
from bfd.core.anova import finalize_means as finalize_means
from bfd.core.content import Pass2Plan as Pass2Plan
from bfd.core.content import Pass2State as Pass2State
from bfd.core.content import logit_residual as logit_residual
from bfd.core.dataset import to_dataset as to_dataset
from bfd.core.heads import HeadMaps as HeadMaps
from bfd.core.heads import Modes as Modes
from bfd.core.heads import bi_orthogonal_modes as bi_orthogonal_modes
from bfd.core.heads import head_maps as head_maps
from bfd.core.stream import decompose_layer as decompose_layer
from bfd.core.stream import pass1_chunk as pass1_chunk
from bfd.core.stream import prepare_chunk as prepare_chunk
from bfd.core.summary import BLOCKS as BLOCKS
from bfd.core.summary import HEAD_TYPES as HEAD_TYPES
from bfd.core.summary import UNDEFINED as UNDEFINED
from bfd.core.summary import LayerResult as LayerResult
from bfd.core.summary import pos_embed_cosine as pos_embed_cosine
from bfd.core.summary import summarize as summarize
