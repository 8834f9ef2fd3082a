"""T = 1, time-averaged tokens only, no temporal module: our video path IS the image path.

With one frame the spatial tokens are that frame's tokens, and with pooling "temporal" and
temporal module "none" the video tokens are projector(frame tokens): the backbone's own image
forward (transformers, same weights, same prompt) must give the same logits. This pins the
vision layer, the token selection, the projector, the chat template and the splice position.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from redvillm.batching import VideoSample, collate
from redvillm.families.registry import load_family
from redvillm.model_io import build_video_llm

QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]


@pytest.mark.parametrize("question", QUESTIONS)
def test_one_frame_equals_backbone_image_forward(tiny_llava, question):
    processor = AutoProcessor.from_pretrained(tiny_llava)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    inputs = processor(images=frame, text=prompt, return_tensors="pt")
    reference = LlavaForConditionalGeneration.from_pretrained(tiny_llava).eval()
    with torch.no_grad():
        expected = reference(**inputs).logits

    family = load_family(str(tiny_llava))
    encoder = family.load_frame_encoder(torch.device("cpu"), torch.float32)
    llm = build_video_llm(str(tiny_llava), "temporal", "none", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        frame_tokens = encoder(inputs["pixel_values"])  # (T=1, N, D): a one-frame video
        temporal, spatial = family.pool(frame_tokens)
        sample = VideoSample(llm.chat.encode(question), temporal, spatial)
        batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, with_labels=False)
        ours = llm.logits(batch)
    assert torch.equal(batch.input_ids, inputs["input_ids"])  # same prompt, same splice position
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
