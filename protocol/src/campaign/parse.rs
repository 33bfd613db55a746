//! Bounded parsing of a spec's text: size, aliases, depth and node count
//! checked on the event stream before serde builds anything.

use super::SpecFormat;
use crate::spec::CampaignSpec;
use crate::validation::{FieldError, FieldErrors};

/// The largest campaign spec accepted, in bytes of YAML or JSON text.
pub const MAX_SPEC_BYTES: usize = 512 * 1024;
/// The deepest nesting of mappings and sequences in a spec; a real one needs 5.
pub const MAX_SPEC_DEPTH: usize = 16;
/// The most YAML nodes (scalars, mappings, sequences) in a spec.
pub const MAX_SPEC_NODES: usize = 100_000;

pub(super) fn spec_error(message: String) -> FieldErrors {
    FieldErrors(vec![FieldError {
        path: String::new(),
        message,
    }])
}

/// Refuses YAML that could cost more to load than its size suggests, before
/// it is deserialized: any alias (`*name`: a 100 KB anchored string aliased
/// 2,000 times is 200 MB once expanded), nesting deeper than
/// [`MAX_SPEC_DEPTH`], more than [`MAX_SPEC_NODES`] nodes. One pass over the
/// event stream, nothing expanded.
pub(super) fn check_yaml_bounds(text: &str) -> Result<(), FieldErrors> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let (mut depth, mut nodes) = (0usize, 0usize);
    loop {
        let (event, marker) = parser
            .next_token()
            .map_err(|error| spec_error(format!("is not valid YAML: {error}")))?;
        let at = format!("line {}, column {}", marker.line(), marker.col() + 1);
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => {
                return Err(spec_error(format!(
                    "YAML aliases (`*name`) are not allowed in a campaign spec ({at}); write the value out"
                )));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                nodes += 1;
                if depth > MAX_SPEC_DEPTH {
                    return Err(spec_error(format!(
                        "is nested deeper than {MAX_SPEC_DEPTH} levels ({at})"
                    )));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::Scalar(..) => nodes += 1,
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
        }
        if nodes > MAX_SPEC_NODES {
            return Err(spec_error(format!(
                "has more than {MAX_SPEC_NODES} values ({at})"
            )));
        }
    }
}

/// Parses the document's shape; a shape error names its path (and line, for YAML).
/// The text is bounded before it is parsed: at most [`MAX_SPEC_BYTES`], and for
/// YAML no aliases and bounded nesting (see `check_yaml_bounds`).
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<CampaignSpec, FieldErrors> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(spec_error(format!(
            "is {} bytes; a campaign spec may have at most {MAX_SPEC_BYTES}",
            text.len()
        )));
    }
    let located = |path: String, message: String| {
        let path = if path == "." { String::new() } else { path };
        // serde_norway starts some messages with the parent's path; we print our own.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.is_empty() && path.starts_with(prefix) => {
                rest.to_string()
            }
            _ => message,
        };
        FieldErrors(vec![FieldError { path, message }])
    };
    match format {
        SpecFormat::Yaml => {
            check_yaml_bounds(text)?;
            let deserializer = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer)
                .map_err(|error| located(error.path().to_string(), error.inner().to_string()))
        }
        SpecFormat::Json => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let spec: CampaignSpec = serde_path_to_error::deserialize(&mut deserializer)
                .map_err(|error| located(error.path().to_string(), error.inner().to_string()))?;
            deserializer
                .end()
                .map_err(|error| located(String::new(), error.to_string()))?;
            Ok(spec)
        }
    }
}
