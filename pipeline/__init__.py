"""Apache Beam jobs that read corpora, score documents, select and write Parquet."""
