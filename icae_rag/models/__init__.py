"""Models: loading the backbones and running the decoder over memories.

- `backbones`: `load_decoder` / `load_encoder` and the `DecoderBackbone` / `EncoderBackbone` they
  return (embedded defaults, local directories, hub ids, tiny test models).
- `kv_attention`: the attention function that reads caches holding kept KV entries (per-(layer,
  head) masks, entry scores, re-rotation of keys).
- `hf_compat`: what differs between the transformers releases pyproject allows.
- `runtime`: device and dtype resolution.

Submodules are imported on their own (`from icae_rag.models.backbones import load_decoder`), so
`icae_rag.models.hf_compat` stays light.
"""
