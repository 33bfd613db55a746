-- flotilla's per-target results in Athena (Glue Data Catalog), over the
-- layout the scheduler writes for `output: s3://bucket/prefix`:
--   s3://bucket/prefix/run=<uuid>/account=<12 digits>/region=<region>/part-b<batch>-s<step>.jsonl.gz
-- one JSON object per target and step (gzip is read by extension).
-- `region` is the partition column (the files' own `region` field holds
-- the same value); run and account are partitions besides the run_id and
-- account_id columns. A unit test (scheduler/src/sink.rs) keeps these columns
-- equal to the fields the sink writes.
CREATE EXTERNAL TABLE flotilla_results (
  run_id string,
  campaign string,
  account_id string,
  batch_id bigint,
  step_index int,
  step string,
  instance_id string,
  status string,
  status_detail string,
  command_id string,
  requested_at bigint,
  started_at bigint,
  finished_at bigint,
  response_code int,
  output string,
  compliance struct<
    operation: string,
    installed: int,
    installed_other: int,
    installed_pending_reboot: int,
    installed_rejected: int,
    missing: int,
    failed: int,
    not_applicable: int,
    critical_non_compliant: int,
    security_non_compliant: int,
    other_non_compliant: int>,
  compliance_missing string,
  output_location string
)
PARTITIONED BY (run string, account string, region string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
LOCATION 's3://example-results-bucket/flotilla/';

-- The paths are Hive-style (run=…/account=…/region=…), so new runs'
-- partitions load with one statement (or a Glue crawler, or ALTER TABLE …
-- ADD PARTITION per run). Partition projection is not used: run ids are
-- UUIDs and accounts are unbounded, which projection can only take as
-- `injected` values — and then every query must name every run and account
-- it reads, which rules out "non-compliant instances by account".
MSCK REPAIR TABLE flotilla_results;
