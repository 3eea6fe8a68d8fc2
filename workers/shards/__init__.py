"""Prepare SR data sets once into Parquet shards, so every trial reads the same bytes fast.

Why shards: DIV2K + Flickr2K are 3450 multi-megapixel PNGs. Decoding folders of files on every
epoch from object storage is slow and each trial would re-validate the same images; a one-off,
idempotent preparation step checks every image once (clear reasons for anything rejected), mod-crops
it, optionally cuts BasicSR-style sub-images, pairs it with the official LR image when there is one,
and writes a few large Parquet files that Ray Data reads in parallel from a local disk or s3://.

One job per module:

* :mod:`~workers.shards.format`: the shard schema, the manifest, and reading a finished data set;
* :mod:`~workers.shards.rows`: one source image → shard rows (decode, check, convert, mod-crop, cut);
* :mod:`~workers.shards.encoding`: how a row stores its pixels (PNG, or raw bytes Parquet compresses);
* :mod:`~workers.shards.writer`: rows → ``part-#####.parquet`` shards and the manifest, idempotently;
* :mod:`~workers.shards.folders`: prepare folders of HR images (with official LR beside them);
* :mod:`~workers.shards.demo`: the built-in demo data set from scikit-image's photographs.

Paths may be local or URIs: :mod:`workers.storage`. The modules log under ``workers.shards``.
"""

__all__: list[str] = []
