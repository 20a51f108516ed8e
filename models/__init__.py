"""Models shipped inside the dnsep package (installed as ``dnsep_cli.models``).

Each sub-folder is one model: ``config.json``, ``model.safetensors`` and ``MODEL_CARD.md``.
"""
