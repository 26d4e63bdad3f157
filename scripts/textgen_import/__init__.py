"""Model sources for scripts/import_model.py: each module turns one kind of source into a BentoML store model.

    common         what every source shares: refusals, provenance, store names, storing plain files
    hub            a Hugging Face hub repository (safetensors only)
    local          a local folder with weights, or a config + tokenizer with seeded random weights
    gguf_file      a GGUF file, dequantized by transformers
    mlflow_source  a model logged with MLflow's transformers flavor (models:/ or runs:/ URIs)
    lora           a PEFT LoRA adapter folder, stored as it is with labels naming its base model

torch, transformers, mlflow, gguf and peft load only in the module that needs them, so `--help` and the
unit tests of the pure parts stay fast. Installed with the project (pyproject.toml finds packages under scripts/).
"""
