//! Arbitrary bytes and syntax-shaped garbage fed to every parser that reads
//! input from outside (campaign specs as YAML and JSON, EventBridge events,
//! Alertmanager payloads, signed envelopes): no panic, and each input is
//! answered within a bounded time. Many cases; each parser gets the same.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use protocol::job::UnixMillis;
use protocol::signing::Keyring;
use protocol::{Campaign, Job, Report, SpecFormat};

/// Generous for a debug build on a loaded 2-core machine; the inputs are at
/// most a few KB, so anything near this is a blow-up, not noise.
const PER_INPUT: Duration = Duration::from_secs(2);

/// Text made of YAML and JSON syntax: nesting, anchors, aliases, tags,
/// block scalars, quotes, keys.
fn syntax_soup() -> impl Strategy<Value = String> {
    const PIECES: &[&str] = &[
        "[",
        "]",
        "{",
        "}",
        ": ",
        ", ",
        "- ",
        "\n",
        "  ",
        "&a ",
        "*a",
        "!!str ",
        "|\n",
        ">\n",
        "\"",
        "'",
        "# c\n",
        "name",
        "steps",
        "accounts",
        "ids",
        "regions",
        "\"111122223333\"",
        "us-east-1",
        "1e309",
        "-0",
        "null",
        "~",
        "<<: *a",
        "\\u0000",
        "\u{feff}",
        "é",
    ];
    // Indexes, not a union of strategies: cheap to generate and to shrink.
    vec(0..PIECES.len(), 0..400)
        .prop_map(|indexes| indexes.into_iter().map(|index| PIECES[index]).collect())
}

fn bounded<T>(what: &str, input: &str, parse: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let answer = parse();
    let took = started.elapsed();
    assert!(
        took < PER_INPUT,
        "{what} took {took:?} on {} bytes",
        input.len()
    );
    answer
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn campaign_specs_never_panic(text in syntax_soup()) {
        bounded("YAML spec", &text, || Campaign::parse(&text, SpecFormat::Yaml).is_ok());
        bounded("JSON spec", &text, || Campaign::parse(&text, SpecFormat::Json).is_ok());
    }

    #[test]
    fn arbitrary_bytes_as_specs_events_and_alerts_never_panic(bytes in vec(any::<u8>(), 0..4096)) {
        let text = String::from_utf8_lossy(&bytes);
        bounded("YAML spec", &text, || Campaign::parse(&text, SpecFormat::Yaml).is_ok());
        bounded("events", &text, || scheduler::triggers::parse_events(&text).is_ok());
        bounded("alerts", &text, || scheduler::triggers::parse_alerts(&text).is_ok());
        let keys = Keyring::ephemeral_deployment().unwrap().scheduler;
        bounded("job envelope", &text, || protocol::envelope::open::<Job>(&bytes, &keys, UnixMillis::now()).is_ok());
        bounded("report envelope", &text, || protocol::envelope::open::<Report>(&bytes, &keys, UnixMillis::now()).is_ok());
    }

    #[test]
    fn json_shaped_events_and_alerts_never_panic(text in syntax_soup()) {
        bounded("events", &text, || scheduler::triggers::parse_events(&text).is_ok());
        bounded("alerts", &text, || scheduler::triggers::parse_alerts(&text).is_ok());
    }
}

#[test]
fn deeply_nested_json_events_and_alerts_are_refused_not_overflowed() {
    for depth in [1_000, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(
            bounded("events", &nested, || scheduler::triggers::parse_events(
                &nested
            ))
            .is_err()
        );
        let object = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert!(
            bounded("alerts", &object, || scheduler::triggers::parse_alerts(
                &object
            ))
            .is_err()
        );
    }
}
