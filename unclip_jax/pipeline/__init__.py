"""unCLIP pipelines: the folder format, sampling settings, random-weight pipelines and `Pipeline`.

    settings.py        StageSampling, its checks, `sample_kwargs` (the one translation to diffusion.sample)
    folder.py          pipeline.json: read, check, assemble; restore a stage's parameter tree
    random_weights.py  random-weight pipelines from the model presets (tests, benchmarks)
    programs.py        the traced pieces (prior, decoder, inversion, upsamplers) and the whole-call program
    runner.py          sharding over the local devices, the compile cache, timings
    engine.py          `Pipeline`
    candidates.py      every decoder candidate drawn one by one, and rated as the program rates them
    __main__.py        python -m unclip_jax.pipeline init-random | assemble
"""

from unclip_jax.pipeline.engine import Component, Pipeline
from unclip_jax.pipeline.folder import (DEMO_PIPELINE, PIPELINE_FILE, REQUIRED, STAGE_KINDS, assemble,
                                        default_pipeline, load_stage_tree, pack, read_pipeline)
from unclip_jax.pipeline.programs import (DECODER_KEY, DECODER_NOISE_KEY, PRIOR_KEY, SR_KEY, SRStage, TextEncoding,
                                          bicubic_matrix, candidate_keys, image_keys, upsample_bicubic)
from unclip_jax.pipeline.random_weights import make_random_pipeline, random_params, random_stage_configs
from unclip_jax.pipeline.settings import (DIFFUSION_STAGES, MAX_CANDIDATES, StageSampling, check_sampling, check_scale,
                                          check_steps, sample_kwargs)

__all__ = ["Component", "Pipeline", "DEMO_PIPELINE", "default_pipeline", "pack", "PIPELINE_FILE", "REQUIRED",
           "STAGE_KINDS", "assemble", "load_stage_tree", "read_pipeline", "DECODER_KEY", "DECODER_NOISE_KEY",
           "PRIOR_KEY", "SR_KEY", "SRStage", "TextEncoding", "bicubic_matrix", "candidate_keys", "image_keys",
           "upsample_bicubic", "make_random_pipeline", "random_params", "random_stage_configs", "DIFFUSION_STAGES",
           "MAX_CANDIDATES", "StageSampling", "check_sampling", "check_scale", "check_steps", "sample_kwargs"]
