"""Datasets: record formats, ingest (read, check, split, hash, report), token lengths, duplicates,
where a dataset comes from (folders, S3, the Data Store), and prompt rendering shared by training
and evaluation."""
