"""The training configs: plain data (ml_collections.ConfigDict), one ``get_config()`` per file.

A package, installed with streampro_jax (setup.cfg ``[options.packages.find]``), so a config file
loaded by path (``--config=configs/tiny_synthetic.py``) imports its siblings with
``from configs import common`` from any working directory, without sys.path edits.
"""
