"""Data preparation: inputs -> validated, cleaned, split, tokenized datasets on disk + manifest.

What lives where (each module imports only from the ones listed before it):

- ``values``: one cell of user data: missing, text, integer.
- ``sources``: where an input comes from (local file or ``datasets`` folder, ``s3://``,
  hub, ``sample://``), its fingerprint, and the one check that S3 is configured.
- ``readers``: CSV / TSV / JSON lines / Parquet / ``datasets`` splits into a :class:`Table`.
- ``columns``: which columns hold text, text pair and label (given or detected).
- ``labels``: cleaning rows (what is dropped and why) and settling the class names.
- ``splits``: stratified, seeded splits and samples.
- ``tokenize``: tokenizing the classification splits; a tokenizer's identity.
- ``store``: the prepared-data folders (``WORK_DIR/prepared/<key>``): publish, open, load.
- ``prepare``: :func:`prepare_data` for classification (the
  manifest is described there).
- ``check``: :func:`check_data`, the check before a run: missing inputs found without
  reading (no pandas), then the inputs validated as ``prepare`` does.
- ``lm``: the same for language-model data (domain text, SFT).
- ``task``: the Prefect task around :func:`prepare_data`.
"""
