"""The `bench peers` sizes: the peers' model configs (open_clip and diffusers keyword arguments) and the
batch of every row, from the test suite's `tiny` wiring check to Karlo's published sizes."""

from __future__ import annotations

from unclip_jax.errors import UserError


def _karlo_unet(size, chans, layers, attention, cross, head, groups=32):
  downs = tuple("SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attention)
  ups = tuple("SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attention))
  return dict(sample_size=size, layers_per_block=layers, down_block_types=downs, up_block_types=ups,
              mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=chans, in_channels=3, out_channels=6,
              cross_attention_dim=cross, class_embed_type="identity", attention_head_dim=head,
              resnet_time_scale_shift="scale_shift", norm_num_groups=groups)


def _sr_unet(size, chans, layers, groups=32):
  return dict(sample_size=size, layers_per_block=layers, down_block_types=("ResnetDownsampleBlock2D",) * len(chans),
              up_block_types=("ResnetUpsampleBlock2D",) * len(chans), block_out_channels=chans, in_channels=6,
              out_channels=3, add_attention=False, norm_num_groups=groups)


def size_spec(size: str) -> dict:
  """The peer model configs (open_clip / diffusers kwargs) and batch sizes of a bench size."""
  if size == "tiny":  # wiring only (the test suite): every model a few thousand parameters
    d, ctx = 32, 16
    return dict(
        clip=dict(embed_dim=d, quick_gelu=False, vision=dict(image_size=16, patch_size=8, width=32, layers=1,
                                                             head_width=16),
                  text=dict(context_length=ctx, vocab_size=49408, width=d, heads=2, layers=1)),
        prior=dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, embedding_dim=d, num_embeddings=ctx),
        decoder=dict(unet=_karlo_unet(8, (32, 64), 1, (False, True), 32, 16, groups=8),
                     text_proj=dict(clip_embeddings_dim=d, time_embed_dim=128, cross_attention_dim=32)),
        upsampler=_sr_unet(32, (16, 32), 1, groups=8), heads=(2, 2),
        batch=dict(clip=2, prior_train=8, prior_sample=2, decoder_train=8, decoder_sample=2, pipeline=2))
  if size == "cpu":
    d, ctx = 128, 77
    return dict(
        clip=dict(embed_dim=d, quick_gelu=False, vision=dict(image_size=64, patch_size=8, width=256, layers=4,
                                                             head_width=64),
                  text=dict(context_length=ctx, vocab_size=49408, width=d, heads=2, layers=4)),
        prior=dict(num_attention_heads=4, attention_head_dim=64, num_layers=6, embedding_dim=d, num_embeddings=ctx),
        decoder=dict(unet=_karlo_unet(32, (64, 128, 192), 2, (False, True, True), 128, 64),
                     text_proj=dict(clip_embeddings_dim=d, time_embed_dim=256, cross_attention_dim=128)),
        upsampler=_sr_unet(128, (32, 64, 128, 192), 1), heads=(4, 2),
        batch=dict(clip=8, prior_train=32, prior_sample=8, decoder_train=8, decoder_sample=4, pipeline=4))
  if size == "karlo":  # Kakao Brain's Karlo v1 alpha sizes, CLIP ViT-L/14
    d, ctx = 768, 77
    return dict(
        clip=dict(embed_dim=d, quick_gelu=True, vision=dict(image_size=224, patch_size=14, width=1024, layers=24,
                                                            head_width=64),
                  text=dict(context_length=ctx, vocab_size=49408, width=768, heads=12, layers=12)),
        prior=dict(num_attention_heads=32, attention_head_dim=64, num_layers=20, embedding_dim=d, num_embeddings=ctx),
        decoder=dict(unet=_karlo_unet(64, (320, 640, 960, 1280), 3, (False, True, True, True), 1536, 64),
                     text_proj=dict(clip_embeddings_dim=d, time_embed_dim=1280, cross_attention_dim=1536)),
        upsampler=_sr_unet(256, (320, 640, 960, 1280), 3), heads=(16, 12),
        batch=dict(clip=32, prior_train=64, prior_sample=8, decoder_train=8, decoder_sample=8, pipeline=8))
  raise UserError(f"unknown --size {size!r}; choose cpu, karlo or tiny")
