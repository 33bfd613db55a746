//! Jobs and reports survive the wire exactly, and no byte string makes a consumer panic.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use protocol::campaign::{
    ApiRateLimits, ExecutionRole, OutputLogging, Platform, Step, TargetSelection, TargetSelector,
};
use protocol::envelope::{self, EnvelopeError, FORMAT_VERSION, Message};
use protocol::job::{
    Batch, DiscoverJob, ExecuteJob, Location, PollJob, Priority, RunContext, TargetWindow,
    UnixMillis, WindowTag,
};
use protocol::report::{
    DiscoveredTarget, LocationFailed, LocationFailure, PatchCompliance, PatchOperation,
    StepResults, TargetResult, TargetsDiscovered,
};
use protocol::signing::{Keyring, SignerKind, SigningIdentity};
use protocol::status::StatusDetail;
use protocol::{Job, Report};
use uuid::Uuid;

/// The key every test message is signed with, and a keyring that trusts it.
static SIGNER: std::sync::LazyLock<SigningIdentity> = std::sync::LazyLock::new(|| {
    SigningIdentity::generate(SignerKind::Scheduler, "test-scheduler").unwrap()
});
static TRUST: std::sync::LazyLock<Keyring> =
    std::sync::LazyLock::new(|| Keyring::default().signing_as(SIGNER.clone()));

fn encode<M: Message>(message: &M) -> Result<Vec<u8>, EnvelopeError> {
    envelope::seal(message, &SIGNER, UnixMillis::now())
}

fn decode<M: Message>(bytes: &[u8]) -> Result<M, EnvelopeError> {
    envelope::open(bytes, &TRUST, UnixMillis::now()).map(|opened| opened.message)
}

/// Signs `bytes` (an envelope without its signature) again: how a test
/// reaches the body decoder with a body of its making.
fn resign(mut unsigned: Vec<u8>) -> Vec<u8> {
    let signature = SIGNER.sign(&unsigned);
    unsigned.extend_from_slice(&signature);
    unsigned
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including the empty string.
    ".{0,40}"
}

fn location() -> impl Strategy<Value = Location> {
    ("[0-9]{12}", "[a-z]{2}-[a-z]{4,9}-[1-9]")
        .prop_map(|(account_id, region)| Location { account_id, region })
}

fn platform() -> impl Strategy<Value = Platform> {
    prop_oneof![
        Just(Platform::Linux),
        Just(Platform::Windows),
        Just(Platform::MacOS)
    ]
}

fn run_context() -> impl Strategy<Value = RunContext> {
    (
        uuid(),
        text(),
        any::<u32>(),
        text(),
        option::of(text()),
        900u64..=3600,
        0.01f64..10_000.0,
    )
        .prop_map(
            |(run_id, campaign, campaign_version, role_name, external_id, seconds, rate)| {
                RunContext {
                    run_id,
                    campaign,
                    campaign_version,
                    role: ExecutionRole {
                        name: role_name,
                        external_id,
                        session_duration: Duration::from_secs(seconds),
                    },
                    api_rate_limits: ApiRateLimits {
                        send_command: rate,
                        ..ApiRateLimits::default()
                    },
                    priority: if rate > 5_000.0 {
                        Priority::Urgent
                    } else {
                        Priority::Bulk
                    },
                    output_logging: (rate > 9_000.0).then(|| OutputLogging {
                        s3_bucket: Some("flotilla-output".into()),
                        s3_key_prefix: Some("patch/tuesday".into()),
                        cloudwatch_log_group: None,
                    }),
                }
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    (
        text(),
        text(),
        btree_map(text(), vec(text(), 0..4), 0..4),
        30u64..=2_592_000,
        proptest::option::of(text()),
    )
        .prop_map(
            |(name, document, parameters, seconds, document_version)| Step {
                name,
                document,
                parameters,
                timeout: Duration::from_secs(seconds),
                document_version,
            },
        )
}

fn target_selection() -> impl Strategy<Value = TargetSelection> {
    let selector = prop_oneof![
        Just(TargetSelector::All),
        vec(text(), 0..5).prop_map(TargetSelector::InstanceIds),
        btree_map(text(), vec(text(), 1..3), 0..5).prop_map(TargetSelector::Tags),
        (
            btree_map(text(), vec(text(), 1..3), 0..5),
            vec(text(), 0..3)
        )
            .prop_map(|(tags, instance_ids)| TargetSelector::TaggedInstances {
                tags,
                instance_ids
            }),
    ];
    (selector, option::of(platform()), any::<bool>()).prop_map(
        |(selector, platform, online_only)| TargetSelection {
            selector,
            platform,
            online_only,
        },
    )
}

fn batch() -> impl Strategy<Value = Batch> {
    (any::<u32>(), vec("i-[0-9a-f]{17}", 0..50)).prop_map(|(batch_id, instance_ids)| Batch {
        batch_id,
        instance_ids,
    })
}

fn window_tag() -> impl Strategy<Value = WindowTag> {
    (text(), vec(text(), 0..10)).prop_map(|(tag, names)| WindowTag { tag, names })
}

fn target_window() -> impl Strategy<Value = TargetWindow> {
    prop_oneof![
        (text(), text(), text(), text(), any::<u64>()).prop_map(
            |(tag, name, schedule, timezone, duration_ms)| TargetWindow::Named {
                tag,
                name,
                schedule,
                timezone,
                duration_ms,
            }
        ),
        (text(), vec(text(), 0..10)).prop_map(|(tag, names)| TargetWindow::Untagged { tag, names }),
    ]
}

fn execute_job() -> impl Strategy<Value = ExecuteJob> {
    (
        uuid(),
        run_context(),
        location(),
        batch(),
        any::<u16>(),
        step(),
        any::<bool>(),
        option::of(target_selection()),
        option::of(target_window()),
    )
        .prop_map(
            |(
                job_id,
                run,
                location,
                batch,
                step_index,
                step,
                collect_patch_compliance,
                recheck,
                window,
            )| {
                ExecuteJob {
                    job_id,
                    run,
                    location,
                    batch,
                    step_index,
                    step,
                    collect_patch_compliance,
                    recheck,
                    window,
                }
            },
        )
}

fn job() -> impl Strategy<Value = Job> {
    prop_oneof![
        (
            uuid(),
            run_context(),
            location(),
            target_selection(),
            any::<u32>(),
            option::of(text()),
            option::of(window_tag())
        )
            .prop_map(
                |(job_id, run, location, targets, page, next_token, window_tag)| Job::Discover(
                    DiscoverJob {
                        job_id,
                        run,
                        location,
                        targets,
                        page,
                        next_token,
                        window_tag,
                    }
                )
            ),
        execute_job().prop_map(Job::Execute),
        (
            uuid(),
            execute_job(),
            text(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(
                |(job_id, execute, command_id, sent_at, deadline, attempt, cancel_sent)| {
                    Job::Poll(PollJob {
                        job_id,
                        execute,
                        command_id,
                        sent_at: UnixMillis(sent_at),
                        deadline: UnixMillis(deadline),
                        attempt,
                        cancel_sent,
                    })
                }
            ),
    ]
}

fn compliance() -> impl Strategy<Value = PatchCompliance> {
    (
        prop_oneof![Just(PatchOperation::Scan), Just(PatchOperation::Install)],
        any::<[u32; 10]>(),
    )
        .prop_map(|(operation, c)| PatchCompliance {
            operation,
            installed: c[0],
            installed_other: c[1],
            installed_pending_reboot: c[2],
            installed_rejected: c[3],
            missing: c[4],
            failed: c[5],
            not_applicable: c[6],
            critical_non_compliant: c[7],
            security_non_compliant: c[8],
            other_non_compliant: c[9],
        })
}

fn target_result() -> impl Strategy<Value = TargetResult> {
    (
        "i-[0-9a-f]{17}",
        prop::sample::select(StatusDetail::ALL.to_vec()),
        option::of(text()),
        [
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(any::<u64>()),
        ],
        option::of(any::<i32>()),
        text(),
        option::of(compliance()),
    )
        .prop_map(
            |(
                instance_id,
                status,
                command_id,
                [requested, started, finished],
                response_code,
                output,
                compliance,
            )| {
                TargetResult {
                    instance_id,
                    status,
                    command_id,
                    requested_at: requested.map(UnixMillis),
                    started_at: started.map(UnixMillis),
                    finished_at: finished.map(UnixMillis),
                    response_code,
                    output_excerpt: output.clone(),
                    compliance,
                    compliance_missing: compliance.is_none().then_some(output),
                }
            },
        )
}

fn report() -> impl Strategy<Value = Report> {
    prop_oneof![
        (
            uuid(),
            location(),
            any::<u32>(),
            vec(
                (
                    "i-[0-9a-f]{8}",
                    option::of(platform()),
                    any::<bool>(),
                    option::of(text())
                ),
                0..50
            ),
            any::<bool>()
        )
            .prop_map(|(run_id, location, page, targets, last_page)| {
                Report::TargetsDiscovered(TargetsDiscovered {
                    run_id,
                    location,
                    page,
                    targets: targets
                        .into_iter()
                        .map(|(instance_id, platform, online, window)| DiscoveredTarget {
                            instance_id,
                            platform,
                            online,
                            window,
                        })
                        .collect(),
                    last_page,
                })
            }),
        (
            uuid(),
            location(),
            prop_oneof![
                Just(LocationFailure::AccessDenied),
                Just(LocationFailure::Rejected),
                Just(LocationFailure::RetriesExhausted),
                Just(LocationFailure::SendRefused),
                Just(LocationFailure::StepRefused)
            ],
            text()
        )
            .prop_map(|(run_id, location, reason, detail)| Report::LocationFailed(
                LocationFailed {
                    run_id,
                    location,
                    reason,
                    detail,
                }
            )),
        (
            uuid(),
            location(),
            any::<u32>(),
            any::<u16>(),
            vec(target_result(), 0..20)
        )
            .prop_map(|(run_id, location, batch_id, step_index, results)| {
                Report::StepResults(StepResults {
                    run_id,
                    location,
                    batch_id,
                    step_index,
                    results,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn jobs_round_trip(job in job()) {
        let bytes = encode(&job).unwrap();
        prop_assert_eq!(decode::<Job>(&bytes).unwrap(), job);
    }

    #[test]
    fn reports_round_trip(report in report()) {
        let bytes = encode(&report).unwrap();
        prop_assert_eq!(decode::<Report>(&bytes).unwrap(), report);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode::<Job>(&bytes);
        let _ = decode::<Report>(&bytes);
    }

    /// Garbage behind a valid, signed header: the bincode layer must fail
    /// cleanly too (only a trusted key's holder can get bytes this far).
    #[test]
    fn garbage_bodies_never_panic(body in vec(any::<u8>(), 0..512)) {
        for kind in [1u8, 2] {
            let mut bytes = b"FLT".to_vec();
            bytes.push(FORMAT_VERSION);
            bytes.push(kind);
            bytes.extend_from_slice(&UnixMillis::now().0.to_be_bytes());
            bytes.push(u8::try_from(SIGNER.id.len()).unwrap());
            bytes.extend_from_slice(SIGNER.id.as_bytes());
            bytes.extend_from_slice(&body);
            let bytes = resign(bytes);
            let _ = decode::<Job>(&bytes);
            let _ = decode::<Report>(&bytes);
        }
    }

    /// Any change to any byte of a signed message is caught.
    #[test]
    fn every_single_byte_change_is_refused(job in job(), flip in 1u8..=255, at in any::<prop::sample::Index>()) {
        let mut bytes = encode(&job).unwrap();
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        prop_assert!(decode::<Job>(&bytes).is_err());
    }

    #[test]
    fn every_truncation_of_a_real_message_is_an_error(job in job()) {
        let bytes = encode(&job).unwrap();
        for length in 0..bytes.len() {
            prop_assert!(decode::<Job>(&bytes[..length]).is_err());
        }
    }
}

fn sample_job() -> Job {
    Job::Discover(DiscoverJob {
        job_id: Uuid::from_u128(7),
        run: RunContext {
            run_id: Uuid::from_u128(1),
            campaign: "patch-scan-nightly".into(),
            campaign_version: 3,
            role: ExecutionRole {
                name: "FlotillaExecutionRole".into(),
                external_id: Some("ext".into()),
                session_duration: Duration::from_secs(3600),
            },
            api_rate_limits: ApiRateLimits::default(),
            priority: Priority::Bulk,
            output_logging: None,
        },
        location: Location {
            account_id: "111122223333".into(),
            region: "us-east-1".into(),
        },
        targets: TargetSelection {
            selector: TargetSelector::Tags(BTreeMap::from([(
                "PatchGroup".into(),
                vec!["web".into()],
            )])),
            platform: Some(Platform::Linux),
            online_only: true,
        },
        page: 0,
        next_token: None,
        window_tag: None,
    })
}

#[test]
fn an_unknown_format_version_is_refused_not_guessed() {
    let mut bytes = encode(&sample_job()).unwrap();
    bytes[3] = FORMAT_VERSION + 1;
    assert_eq!(
        decode::<Job>(&bytes),
        Err(EnvelopeError::UnsupportedVersion {
            found: FORMAT_VERSION + 1
        })
    );
}

#[test]
fn a_report_is_not_read_as_a_job() {
    let bytes = encode(&sample_job()).unwrap();
    assert!(matches!(
        decode::<Report>(&bytes),
        Err(EnvelopeError::WrongKind { .. })
    ));
}

#[test]
fn trailing_bytes_and_bad_magic_are_errors() {
    let mut bytes = encode(&sample_job()).unwrap();
    bytes.push(0);
    assert!(matches!(
        decode::<Job>(&bytes),
        Err(EnvelopeError::BadSignature(_))
    ));
    assert_eq!(decode::<Job>(b"JSON{}"), Err(EnvelopeError::BadMagic));
    assert_eq!(decode::<Job>(b"FL"), Err(EnvelopeError::TooShort(2)));
    assert!(!EnvelopeError::BadMagic.is_retryable());
}

#[test]
fn a_huge_declared_length_is_refused_without_allocating_it() {
    // Take a real job and make its campaign name claim u64::MAX bytes.
    let Job::Discover(mut discover) = sample_job() else {
        unreachable!()
    };
    discover.run.campaign = "§campaign§".into();
    let bytes = encode(&Job::Discover(discover)).unwrap();
    let name = "§campaign§".as_bytes();
    let mut needle = vec![u8::try_from(name.len()).unwrap()];
    needle.extend_from_slice(name);
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut forged = bytes[..at].to_vec();
    forged.push(253); // bincode varint: a u64 follows
    forged.extend_from_slice(&u64::MAX.to_le_bytes());
    forged.extend_from_slice(&bytes[at + needle.len()..bytes.len() - 64]);
    let error = decode::<Job>(&resign(forged)).unwrap_err();
    assert!(matches!(error, EnvelopeError::Malformed(_)), "{error}");
}

#[test]
fn unsigned_unknown_stale_and_future_messages_are_refused() {
    let now = UnixMillis::now();
    let job = sample_job();
    // Signed by a key nobody trusts.
    let stranger = SigningIdentity::generate(SignerKind::Scheduler, "stranger").unwrap();
    let bytes = envelope::seal(&job, &stranger, now).unwrap();
    let error = envelope::open::<Job>(&bytes, &TRUST, now).unwrap_err();
    assert_eq!(error, EnvelopeError::UnknownKey("stranger".into()));
    assert_eq!(error.reason(), "unknown_key");
    // A stranger's key under a trusted key's id: the signature fails.
    let impostor = SigningIdentity::generate(SignerKind::Scheduler, &SIGNER.id).unwrap();
    let bytes = envelope::seal(&job, &impostor, now).unwrap();
    let error = envelope::open::<Job>(&bytes, &TRUST, now).unwrap_err();
    assert_eq!(error.reason(), "bad_signature");
    // A replay older than the window; one from the future.
    let short = TRUST.clone().with_max_age(Duration::from_secs(60));
    let old = envelope::seal(&job, &SIGNER, UnixMillis(now.0 - 61_000)).unwrap();
    let error = envelope::open::<Job>(&old, &short, now).unwrap_err();
    assert_eq!(error.reason(), "expired");
    let fresh = envelope::seal(&job, &SIGNER, UnixMillis(now.0 - 59_000)).unwrap();
    assert_eq!(
        envelope::open::<Job>(&fresh, &short, now).unwrap().message,
        job
    );
    let ahead = envelope::seal(&job, &SIGNER, UnixMillis(now.0 + 3_600_000)).unwrap();
    let error = envelope::open::<Job>(&ahead, &TRUST, now).unwrap_err();
    assert_eq!(error.reason(), "from_the_future");
    // The old unsigned format is refused, not guessed at.
    let mut unsigned = b"FLT".to_vec();
    unsigned.extend_from_slice(&[1, 1]);
    unsigned.extend_from_slice(&[0; 80]);
    let error = envelope::open::<Job>(&unsigned, &TRUST, now).unwrap_err();
    assert_eq!(error, EnvelopeError::UnsupportedVersion { found: 1 });
    // Nothing signs without a key.
    assert_eq!(
        envelope::seal_with(&job, &Keyring::default(), now),
        Err(EnvelopeError::NoSigningKey)
    );
    // Who signed travels with the message.
    let opened = envelope::open::<Job>(&fresh, &TRUST, now).unwrap();
    assert_eq!(
        (opened.signer, opened.key_id.as_str()),
        (SignerKind::Scheduler, "test-scheduler")
    );
}

#[test]
fn credentials_have_no_field_in_any_job() {
    // Jobs carry the role's name and ExternalId only; this fails if a field whose
    // name smells of credentials is ever added to the job's wire shape.
    let json = serde_json::to_string(&sample_job()).unwrap().to_lowercase();
    for word in [
        "secret",
        "session_token",
        "access_key",
        "credential",
        "password",
    ] {
        assert!(!json.contains(word), "job mentions {word}: {json}");
    }
}
