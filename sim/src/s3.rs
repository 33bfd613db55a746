//! Just enough of S3 (path-style) for results files: PutObject, GetObject (and
//! HEAD), ListObjectsV2. Objects live in memory; signatures are not checked.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::SimState;

/// An object and when it was stored (HTTP date).
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub body: Bytes,
    pub last_modified: String,
}

fn etag(body: &[u8]) -> String {
    let digest = body.iter().fold(body.len() as u64, |acc, byte| {
        crate::fleet::mix(acc ^ u64::from(*byte))
    });
    format!("\"{digest:016x}\"")
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"),
    )
        .into_response()
}

pub(crate) fn http_date() -> String {
    httpdate(std::time::SystemTime::now())
}

/// RFC 7231 date, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn httpdate(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let days = seconds / 86_400;
    let (hour, minute, second) = ((seconds / 3600) % 24, (seconds / 60) % 60, seconds % 60);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year} {hour:02}:{minute:02}:{second:02} GMT")
}

pub async fn put_object(
    State(state): State<Arc<SimState>>,
    Path((bucket, key)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    // `fail_next` faults of operation PutObject (e.g. AccessDenied: a bucket
    // that refuses writes).
    if let Err(fault) = crate::count_and_fault(&state, "PutObject", false) {
        return error(fault.status, &fault.code, &fault.message);
    }
    let tag = etag(&body);
    state.lock().objects.insert(
        format!("{bucket}/{key}"),
        StoredObject {
            body,
            last_modified: http_date(),
        },
    );
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, value);
    }
    (StatusCode::OK, headers).into_response()
}

pub async fn get_object(
    State(state): State<Arc<SimState>>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    let object = {
        let mut inner = state.lock();
        state.write_due_outputs(&mut inner);
        inner.objects.get(&format!("{bucket}/{key}")).cloned()
    };
    let Some(object) = object else {
        return error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (header::ETAG, etag(&object.body)),
        (header::LAST_MODIFIED, object.last_modified.clone()),
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, object.body).into_response()
}

#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    #[serde(rename = "list-type")]
    list_type: Option<String>,
    prefix: Option<String>,
    /// With `/`: keys below the next `/` fold into CommonPrefixes, as S3 does.
    delimiter: Option<String>,
}

pub async fn list_objects(
    State(state): State<Arc<SimState>>,
    Path(bucket): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    if query.list_type.as_deref() != Some("2") {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "only ListObjectsV2 (list-type=2) is simulated",
        );
    }
    let asked = query.prefix.unwrap_or_default();
    let prefix = format!("{bucket}/{asked}");
    let delimiter = query.delimiter.filter(|d| !d.is_empty());
    let mut inner = state.lock();
    state.write_due_outputs(&mut inner);
    let mut contents = String::new();
    let mut common: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut count = 0;
    for (path, object) in inner.objects.range(prefix.clone()..) {
        if !path.starts_with(&prefix) {
            break;
        }
        let key = path.strip_prefix(&format!("{bucket}/")).unwrap_or(path);
        if let Some(delimiter) = &delimiter
            && let Some(at) = key[asked.len()..].find(delimiter.as_str())
        {
            common.insert(key[..asked.len() + at + delimiter.len()].to_string());
            continue;
        }
        count += 1;
        contents.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            xml_escape(key),
            xml_escape(&etag(&object.body)),
            object.body.len()
        ));
    }
    for prefix in &common {
        count += 1;
        contents.push_str(&format!(
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            xml_escape(prefix)
        ));
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{}</Name><Prefix>{}</Prefix><KeyCount>{count}</KeyCount><MaxKeys>100000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>",
        xml_escape(&bucket),
        xml_escape(&asked)
    );
    ([(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_rfc_7231() {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        assert_eq!(httpdate(time), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
