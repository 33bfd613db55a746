//! The AWS and flotilla identifier patterns a spec's values must match.

use std::sync::LazyLock;

use regex::Regex;

pub(super) fn regex(pattern: &str) -> Regex {
    // Patterns are literals of this file, covered by its tests.
    #[allow(clippy::unwrap_used)]
    Regex::new(pattern).unwrap()
}

pub(super) static NAME: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"));
pub(super) static SECRET_NAME: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)(password|passwd|secret|token|api_?key|private_?key|credential)"));
pub(super) static SSM_REFERENCE: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^\{\{\s*ssm(-secure)?:[A-Za-z0-9_.\-/]+\s*\}\}$"));
/// A CloudWatch Logs log group name.
pub(super) static LOG_GROUP: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[A-Za-z0-9_\-/.#]{1,512}$"));
/// A Prometheus label name.
pub(super) static LABEL_NAME: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"));
pub(super) static RUN_BY: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(role:[a-z]{1,32}|[A-Za-z0-9_.@-]{1,128})$"));
pub(super) static STEP_NAME: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"));
pub(super) static DOCUMENT: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[A-Za-z0-9_\-.:/]{3,128}$"));
/// SSM's DocumentVersion: `$DEFAULT`, `$LATEST` or a number from 1.
pub(super) static DOCUMENT_VERSION: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(\$DEFAULT|\$LATEST|[1-9][0-9]{0,8})$"));
pub(super) static PARAMETER: LazyLock<Regex> = LazyLock::new(|| regex(r"^[A-Za-z0-9_]{1,128}$"));
pub(super) static ACCOUNT_ID: LazyLock<Regex> = LazyLock::new(|| regex(r"^[0-9]{12}$"));
pub(super) static OU_ID: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32})$"));
pub(super) static REGION: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$"));
/// A 12-digit AWS account id.
pub fn is_account_id(text: &str) -> bool {
    ACCOUNT_ID.is_match(text)
}

/// An AWS region name (`us-east-1`, `us-gov-west-1`, …).
pub fn is_region(text: &str) -> bool {
    REGION.is_match(text)
}

/// A managed instance id (`i-…`, `mi-…`).
pub fn is_instance_id(text: &str) -> bool {
    INSTANCE_ID.is_match(text)
}

pub(super) static ROLE_NAME: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[A-Za-z0-9_+=,.@-]{1,64}$"));
/// IAM's `[\w+=,.@:/-]` with ASCII word characters; the 2-1224 length is checked
/// apart (a bounded repetition that large compiles to a huge automaton).
pub(super) static EXTERNAL_ID: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[A-Za-z0-9_+=,.@:/-]+$"));
pub(super) static INSTANCE_ID: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(i-([0-9a-f]{8}|[0-9a-f]{17})|mi-[0-9a-f]{17})$"));
pub(super) static S3_BUCKET: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"));

pub(super) fn check_name(name: &str) -> Result<(), String> {
    if NAME.is_match(name) {
        Ok(())
    } else {
        Err(format!(
            "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit, got {name:?}"
        ))
    }
}
