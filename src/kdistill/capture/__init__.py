"""What a forward pass yields and how it is captured.

A :class:`Features` record (:mod:`.features`) holds what one forward pass produced that a loss
needs, and a :class:`CaptureRequest` says what a loss asks for; :func:`capture` (:mod:`.forward`)
runs a model once with hooks that collect exactly that, and attention maps are recomputed from
hooked queries and keys while the model keeps SDPA (:mod:`.attention_maps`). The names below are
the package's public surface: ``from kdistill.capture import capture, Features``.
"""

from kdistill.capture.attention_maps import AttentionInputs
from kdistill.capture.features import (
    CaptureRequest,
    Features,
    LazyMaps,
    SampledLogProbs,
    TopKLogProbs,
    attention_mask_of,
    features_from_output,
    logits_from_output,
)
from kdistill.capture.forward import capture, check_capture
from kdistill.models.anatomy import call_model

__all__ = [
    "AttentionInputs",
    "CaptureRequest",
    "Features",
    "LazyMaps",
    "SampledLogProbs",
    "TopKLogProbs",
    "attention_mask_of",
    "call_model",
    "capture",
    "check_capture",
    "features_from_output",
    "logits_from_output",
]
