//! Collecting every problem of a spec, each with the path of the field it is about.
//!
//! Validation never stops at the first problem: an operator fixing a campaign wants
//! the whole list at once, as `steps[1].timeout: must be between 30s and 30d`.

use std::fmt;

/// One problem in a spec: where (`steps[1].timeout`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one spec, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }

    /// True when some error is about `path` exactly.
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|error| error.path == path)
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// Walks a spec, tracking the current field path and collecting errors.
///
/// `at("steps").index(1).at("timeout")` names `steps[1].timeout`.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Records the error of `result`, if any, and passes its value on.
    pub fn check<T>(&mut self, path: &FieldPath, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    pub fn finish(self) -> Result<(), FieldErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(FieldErrors(self.errors))
        }
    }
}

/// A path into a spec, built as the validator descends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root() -> Self {
        Self(String::new())
    }

    pub fn at(&self, field: &str) -> Self {
        if self.0.is_empty() {
            Self(field.to_string())
        } else {
            Self(format!("{}.{field}", self.0))
        }
    }

    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// A map entry, keyed by a user-chosen name: `parameters.Operation`.
    pub fn key(&self, key: &str) -> Self {
        self.at(key)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_the_yaml_they_point_into() {
        let path = FieldPath::root().at("steps").index(1).at("timeout");
        assert_eq!(path.to_string(), "steps[1].timeout");
        let path = FieldPath::root().at("targets").at("tags").key("PatchGroup");
        assert_eq!(path.to_string(), "targets.tags.PatchGroup");
    }

    #[test]
    fn every_error_is_kept_in_order() {
        let mut validator = Validator::new();
        validator.error(&FieldPath::root().at("name"), "must not be empty");
        validator.error(&FieldPath::root().at("regions").index(0), "bad");
        let errors = validator.finish().unwrap_err();
        assert_eq!(
            errors.to_string(),
            "name: must not be empty\nregions[0]: bad"
        );
    }
}
