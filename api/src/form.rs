//! A form body (`application/x-www-form-urlencoded`): the console's forms,
//! and the CSRF field the door checks.

use std::collections::BTreeMap;

/// A form body (`application/x-www-form-urlencoded`), field by name.
pub struct Form(BTreeMap<String, String>);

impl Form {
    pub fn parse(body: &[u8]) -> Self {
        Self(serde_urlencoded::from_bytes(body).unwrap_or_default())
    }

    /// A field's value; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_is_read_by_field_and_garbage_is_an_empty_form() {
        let form = Form::parse(b"csrf=abc&reason=bad+patch%21&confirm=yes");
        assert_eq!(form.get("reason"), "bad patch!");
        assert_eq!(form.get("missing"), "");
        assert_eq!(Form::parse(&[0xff, 0xfe, b'=', b'%']).get("csrf"), "");
    }
}
