"""Image-only processors for Qwen2-VL / Qwen2.5-VL, so they run where torchvision does not.

transformers 5 builds the stock ``Qwen2_5_VLProcessor`` / ``Qwen2VLProcessor`` with a video processor, and
video processors need torchvision; the CPU torch wheel has no working torchvision, so
``AutoProcessor.from_pretrained`` fails there (transformers issues #43986, #48556). The subclasses below skip
the video part and use the PIL image processor; images and text work exactly as in the stock processor.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


class _ImageOnly:
    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlyQwen2_5_VLProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without its video processor."""


class ImageOnlyQwen2VLProcessor(_ImageOnly, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without its video processor."""


IMAGE_ONLY = {"qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor, "qwen2_vl": ImageOnlyQwen2VLProcessor}


def load_processor(path: str, model_type: str, **kwargs: Any):
    """The processor of a VLM folder or Hub id: the stock one where it loads, else the image-only one."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    cls = IMAGE_ONLY.get(model_type)
    if cls is not None and not is_torchvision_available():
        return _image_only(cls, path, **kwargs)
    try:
        proc = AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, AttributeError, ValueError):
        if cls is None:
            raise
        return _image_only(cls, path, **kwargs)
    if getattr(proc, "image_processor", None) is None and cls is not None:  # got only the tokenizer back
        return _image_only(cls, path, **kwargs)
    return proc


def _image_only(cls, path: str, **kwargs: Any):
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **kwargs)
    return cls(image_processor, tokenizer, chat_template=getattr(tokenizer, "chat_template", None))
