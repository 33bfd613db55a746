//! Durations and output locations as a spec writes them.

use std::path::PathBuf;
use std::time::Duration;

use super::patterns::S3_BUCKET;
use super::{DEFAULT_OUTPUT_DIRECTORY, OutputLocation};
use crate::spec::Scalar;

/// `90`, `"90s"`, `"30m"`, `"2h"`, `"1d"`, `"1h 30m"`: a whole number of seconds
/// within `range`.
pub fn parse_duration_in(value: &Scalar, range: (Duration, Duration)) -> Result<Duration, String> {
    let (low, high) = range;
    let bounds = || {
        format!(
            "must be between {} and {}",
            short_duration(low),
            short_duration(high)
        )
    };
    let duration = if value.was_number {
        value
            .text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                format!(
                    "{} (a whole number of seconds or like \"30m\"), got {}",
                    bounds(),
                    value.text
                )
            })?
    } else {
        humantime::parse_duration(value.text.trim()).map_err(|_| {
            format!(
                "{} (a whole number of seconds or like \"30m\"), got {:?}",
                bounds(),
                value.text
            )
        })?
    };
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "must be a whole number of seconds, got {:?}",
            value.text
        ));
    }
    if duration < low || duration > high {
        return Err(bounds());
    }
    Ok(duration)
}

/// `30s`, `15m`, `1h`, `30d`: the largest whole unit, as people write limits.
pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// SSM's limit on OutputS3KeyPrefix.
const MAX_OUTPUT_KEY_PREFIX: usize = 500;

/// `output_logging`: an `s3://bucket/prefix` and/or a CloudWatch Logs group.
pub(super) fn validate_output_logging(
    v: &mut crate::validation::Validator,
    spec: &crate::spec::OutputLoggingSpec,
    path: &crate::validation::FieldPath,
) -> Option<super::OutputLogging> {
    if spec.s3.is_none() && spec.cloudwatch_log_group.is_none() {
        v.error(path, "must name s3, cloudwatch_log_group, or both");
        return None;
    }
    let s3 = spec.s3.as_deref().and_then(|url| {
        let parsed = match parse_output(Some(url)) {
            Ok(OutputLocation::S3 { bucket, prefix }) if prefix.len() <= MAX_OUTPUT_KEY_PREFIX => {
                Ok((bucket, prefix))
            }
            Ok(OutputLocation::S3 { .. }) => Err(format!(
                "the key prefix must be at most {MAX_OUTPUT_KEY_PREFIX} characters (SSM's OutputS3KeyPrefix)"
            )),
            Ok(OutputLocation::Local(_)) => {
                Err(format!("must be s3://bucket/prefix, got {url:?}"))
            }
            Err(error) => Err(error),
        };
        v.check(&path.at("s3"), parsed)
    });
    if let Some(group) = &spec.cloudwatch_log_group
        && !super::patterns::LOG_GROUP.is_match(group)
    {
        v.error(
            &path.at("cloudwatch_log_group"),
            format!("must be a CloudWatch Logs group name: 1-512 of letters, digits, '_', '-', '/', '.', '#', got {group:?}"),
        );
    }
    let (s3_bucket, s3_key_prefix) = match s3 {
        Some((bucket, prefix)) => (Some(bucket), Some(prefix)),
        None => (None, None),
    };
    Some(super::OutputLogging {
        s3_bucket,
        s3_key_prefix,
        cloudwatch_log_group: spec.cloudwatch_log_group.clone(),
    })
}

pub fn parse_output(output: Option<&str>) -> Result<OutputLocation, String> {
    let Some(output) = output else {
        return Ok(OutputLocation::Local(PathBuf::from(
            DEFAULT_OUTPUT_DIRECTORY,
        )));
    };
    if let Some(rest) = output.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !S3_BUCKET.is_match(bucket) || bucket.contains("..") {
            return Err(format!(
                "S3 bucket must be 3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit, got {bucket:?}"
            ));
        }
        return Ok(OutputLocation::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        });
    }
    if output.contains("://") {
        return Err(format!(
            "must be a local directory or s3://bucket/prefix, got {output:?}"
        ));
    }
    if output.trim().is_empty() {
        return Err("must be a local directory or s3://bucket/prefix, got an empty string".into());
    }
    Ok(OutputLocation::Local(PathBuf::from(output)))
}
