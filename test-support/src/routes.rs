//! The route patterns an axum router's source registers, read as text, so
//! tests can hold route tables and access matrices against the code.

/// Every `"…"` pattern given to `.route(` in `source`, in order.
pub fn registered(source: &str) -> Vec<String> {
    source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix('"')?;
            rest.split('"').next().map(str::to_string)
        })
        .collect()
}
