"""Model code: Dream / LLaDA checkpoints as transformers models, AR-to-diffusion adaptation, the feature-conditioned
drafter model, safetensors I/O, tokenizer checks and tiny models for tests. Loading folders is ``diffuspec.loading``."""
