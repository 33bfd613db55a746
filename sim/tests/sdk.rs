//! The real aws-sdk clients against the in-process simulator, over HTTP on loopback.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::{
    CommandInvocationStatus, InstanceInformationStringFilter, PingStatus, PlatformType,
};
use sim::SimServer;
use sim::profile::{Bucket, FleetProfile};

const CALLER_SECRET: &str = "caller-secret";

async fn start(profile: FleetProfile) -> SimServer {
    SimServer::start(profile, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn credentials(akid: &str, secret: &str, token: Option<String>) -> Credentials {
    Credentials::new(akid, secret, token, None, "sim-test")
}

fn caller(sim: &SimServer) -> Credentials {
    credentials(
        &sim.state.fleet.profile.caller_access_key_id,
        CALLER_SECRET,
        None,
    )
}

fn sts(sim: &SimServer, creds: Credentials) -> aws_sdk_sts::Client {
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new("us-east-1"))
        .endpoint_url(sim.endpoint_url())
        .credentials_provider(creds)
        .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sts::Client::from_conf(config)
}

fn ssm(sim: &SimServer, creds: Credentials, region: &str) -> aws_sdk_ssm::Client {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(sim.endpoint_url())
        .credentials_provider(creds)
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

fn organizations(sim: &SimServer, creds: Credentials) -> aws_sdk_organizations::Client {
    let config = aws_sdk_organizations::Config::builder()
        .behavior_version(aws_sdk_organizations::config::BehaviorVersion::latest())
        .region(aws_sdk_organizations::config::Region::new("us-east-1"))
        .endpoint_url(sim.endpoint_url())
        .credentials_provider(creds)
        .retry_config(aws_sdk_organizations::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_organizations::Client::from_conf(config)
}

/// Assumes the execution role in account `index` and returns its credentials.
async fn assume(sim: &SimServer, index: u32) -> Credentials {
    let account_id = sim.state.fleet.account_id(index);
    let out = sts(sim, caller(sim))
        .assume_role()
        .role_arn(format!(
            "arn:aws:iam::{account_id}:role/FlotillaExecutionRole"
        ))
        .role_session_name("flotilla-run-test")
        .set_external_id(sim.state.fleet.profile.external_id.clone())
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    credentials(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
    )
}

/// SendCommand of AWS-RunShellScript to `ids`, as most tests need.
async fn send_shell(
    client: &aws_sdk_ssm::Client,
    ids: &[String],
) -> Result<
    aws_sdk_ssm::operation::send_command::SendCommandOutput,
    aws_sdk_ssm::error::SdkError<aws_sdk_ssm::operation::send_command::SendCommandError>,
> {
    client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
}

async fn all_instance_ids(client: &aws_sdk_ssm::Client, page_size: i32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = None;
    for _ in 0..1000 {
        let out = client
            .describe_instance_information()
            .max_results(page_size)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        assert!(out.instance_information_list().len() <= page_size as usize);
        ids.extend(
            out.instance_information_list()
                .iter()
                .map(|i| i.instance_id().unwrap().to_string()),
        );
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            return ids;
        }
    }
    panic!("paging never ended");
}

#[tokio::test]
async fn assume_role_gives_credentials_of_the_roles_account() {
    let sim = start(FleetProfile::tiny()).await;
    let creds = assume(&sim, 2).await;
    let identity = sts(&sim, creds).get_caller_identity().send().await.unwrap();
    assert_eq!(
        identity.account(),
        Some(sim.state.fleet.account_id(2).as_str())
    );
    let me = sts(&sim, caller(&sim))
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(me.account(), Some(sim.state.fleet.account_id(0).as_str()));
}

#[tokio::test]
async fn assume_role_is_denied_for_a_wrong_external_id_or_a_missing_role() {
    let profile = FleetProfile {
        external_id: Some("right-id".into()),
        accounts_without_role: vec![1],
        ..FleetProfile::tiny()
    };
    let sim = start(profile).await;
    let client = sts(&sim, caller(&sim));
    // (account, role, session name, ExternalId, duration) → the error code, if any.
    let attempt = |account: u32,
                   role: &str,
                   session: &str,
                   external_id: Option<&str>,
                   duration: Option<i32>| {
        client
            .assume_role()
            .role_arn(format!(
                "arn:aws:iam::{}:role/{role}",
                sim.state.fleet.account_id(account)
            ))
            .role_session_name(session)
            .set_external_id(external_id.map(str::to_string))
            .set_duration_seconds(duration)
            .send()
    };
    let code = |result: Result<_, aws_sdk_sts::error::SdkError<_, _>>| {
        result.err().map(
            |e: aws_sdk_sts::error::SdkError<
                aws_sdk_sts::operation::assume_role::AssumeRoleError,
                _,
            >| e.code().unwrap_or("no code").to_string(),
        )
    };
    let role = "FlotillaExecutionRole";
    assert_eq!(
        code(attempt(2, role, "s1", Some("wrong-id"), None).await).as_deref(),
        Some("AccessDenied")
    );
    assert_eq!(
        code(attempt(2, role, "s1", None, None).await).as_deref(),
        Some("AccessDenied")
    );
    assert_eq!(
        code(attempt(1, role, "s1", Some("right-id"), None).await).as_deref(),
        Some("AccessDenied"),
        "role missing"
    );
    assert_eq!(
        code(attempt(2, "Admin", "s1", Some("right-id"), None).await).as_deref(),
        Some("AccessDenied")
    );
    assert_eq!(
        code(attempt(2, role, "s1", Some("right-id"), None).await),
        None
    );
    assert_eq!(
        code(attempt(2, role, "x", Some("right-id"), None).await).as_deref(),
        Some("ValidationError")
    );
    assert_eq!(
        code(attempt(2, role, "s1", Some("right-id"), Some(60)).await).as_deref(),
        Some("ValidationError")
    );
}

#[tokio::test]
async fn unknown_keys_are_unrecognized() {
    let sim = start(FleetProfile::tiny()).await;
    let error = ssm(&sim, credentials("AKIAUNKNOWN", "x", None), "us-east-1")
        .describe_instance_information()
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("UnrecognizedClientException"));
}

#[tokio::test]
async fn describe_instance_information_pages_through_exactly_the_locations_instances() {
    let sim = start(FleetProfile::tiny()).await;
    let creds = assume(&sim, 1).await;
    let client = ssm(&sim, creds.clone(), "eu-west-1");
    let ids = all_instance_ids(&client, 5).await;
    let expected = sim.state.fleet.instance_count(1, 1) as usize;
    assert_eq!(ids.len(), expected);
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        expected,
        "no duplicates across pages"
    );
    assert_eq!(
        all_instance_ids(&client, 50).await,
        ids,
        "page size does not change the listing"
    );
    // The other region of the same account is another set of instances.
    let us = all_instance_ids(&ssm(&sim, creds, "us-east-1"), 50).await;
    assert!(us.iter().all(|id| !ids.contains(id)));
    let error = client
        .describe_instance_information()
        .max_results(4)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ValidationException"));
}

#[tokio::test]
async fn describe_instance_information_filters() {
    let sim = start(FleetProfile {
        instances_per_location: sim::profile::CountRange { min: 60, max: 60 },
        ..FleetProfile::tiny()
    })
    .await;
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let filtered = |key: &str, values: &[&str]| {
        let filter = InstanceInformationStringFilter::builder()
            .key(key)
            .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
            .build()
            .unwrap();
        client
            .describe_instance_information()
            .filters(filter)
            .max_results(50)
            .send()
    };
    let online = filtered("PingStatus", &["Online"]).await.unwrap();
    assert!(!online.instance_information_list().is_empty());
    assert!(
        online
            .instance_information_list()
            .iter()
            .all(|i| i.ping_status() == Some(&PingStatus::Online))
    );
    let windows = filtered("PlatformTypes", &["Windows"]).await.unwrap();
    assert!(
        windows
            .instance_information_list()
            .iter()
            .all(|i| i.platform_type() == Some(&PlatformType::Windows))
    );
    let web = filtered("tag:PatchGroup", &["web"]).await.unwrap();
    let first_page = web.instance_information_list().len();
    assert!(
        first_page > 0 && first_page < 50,
        "about half the instances are web: {first_page}"
    );
    for info in web.instance_information_list() {
        let key = sim
            .state
            .fleet
            .parse_instance_id(info.instance_id().unwrap())
            .unwrap();
        assert!(
            sim.state
                .fleet
                .instance(key)
                .tags
                .contains(&("PatchGroup".into(), "web".into()))
        );
    }
    let all = all_instance_ids(&client, 50).await;
    let picked = filtered("InstanceIds", &[&all[3], &all[7]]).await.unwrap();
    let got: Vec<_> = picked
        .instance_information_list()
        .iter()
        .map(|i| i.instance_id().unwrap())
        .collect();
    assert_eq!(got, [all[3].as_str(), all[7].as_str()]);
}

#[tokio::test]
async fn accounts_see_only_their_own_instances_and_commands() {
    let sim = start(FleetProfile::tiny()).await;
    let one = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let two = ssm(&sim, assume(&sim, 2).await, "us-east-1");
    let ids_two = all_instance_ids(&two, 50).await;
    let error = send_shell(&one, std::slice::from_ref(&ids_two[0]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvalidInstanceId"));
    let sent = send_shell(&two, std::slice::from_ref(&ids_two[0]))
        .await
        .unwrap();
    let command_id = sent.command().unwrap().command_id().unwrap();
    let error = one
        .list_command_invocations()
        .command_id(command_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvalidCommandId"));
    let error = one
        .get_command_invocation()
        .command_id(command_id)
        .instance_id(&ids_two[0])
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvocationDoesNotExist"));
    assert!(
        one.list_commands()
            .send()
            .await
            .unwrap()
            .commands()
            .is_empty()
    );
}

#[tokio::test]
async fn commands_run_and_report_through_every_invocation_api() {
    let profile = FleetProfile {
        command_seconds: sim::profile::SecondsRange {
            min: 60.0,
            max: 60.0,
        },
        time_scale: 60.0,
        ..FleetProfile::tiny()
    };
    let sim = start(profile).await;
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let ids = all_instance_ids(&client, 50).await;
    let sent = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .set_instance_ids(Some(ids.clone()))
        .parameters("commands", vec!["uptime".into()])
        .comment("job 1234")
        .timeout_seconds(600)
        .send()
        .await
        .unwrap();
    let command = sent.command().unwrap();
    assert_eq!(command.target_count(), ids.len() as i32);
    assert_eq!(command.comment(), Some("job 1234"));
    let command_id = command.command_id().unwrap().to_string();

    let first = client
        .list_command_invocations()
        .command_id(&command_id)
        .details(true)
        .send()
        .await
        .unwrap();
    assert_eq!(first.command_invocations().len(), ids.len());
    for invocation in first.command_invocations() {
        assert!(
            matches!(
                invocation.status(),
                Some(CommandInvocationStatus::Pending | CommandInvocationStatus::InProgress)
            ) || !sim
                .state
                .fleet
                .instance(
                    sim.state
                        .fleet
                        .parse_instance_id(invocation.instance_id().unwrap())
                        .unwrap()
                )
                .online
                && invocation.status() == Some(&CommandInvocationStatus::Pending),
            "a fresh command is not yet done: {:?}",
            invocation.status()
        );
    }

    // A 60 s command at 60× runs for about a second; offline instances stay
    // Pending until the 600 s timeout (10 s real). Wait, bounded, for all online ones.
    let mut terminal = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let page = client
            .list_command_invocations()
            .command_id(&command_id)
            .details(true)
            .max_results(5)
            .send()
            .await
            .unwrap();
        assert!(page.command_invocations().len() <= 5);
        assert!(page.next_token().is_some() || ids.len() <= 5);
        let all = client
            .list_command_invocations()
            .command_id(&command_id)
            .details(true)
            .send()
            .await
            .unwrap();
        terminal = all
            .command_invocations()
            .iter()
            .filter(|i| {
                !matches!(
                    i.status(),
                    Some(CommandInvocationStatus::Pending | CommandInvocationStatus::InProgress)
                )
            })
            .map(|i| {
                (
                    i.instance_id().unwrap().to_string(),
                    i.status_details().unwrap().to_string(),
                    i.command_plugins()[0].response_code(),
                )
            })
            .collect();
        let online = ids
            .iter()
            .filter(|id| {
                sim.state
                    .fleet
                    .instance(sim.state.fleet.parse_instance_id(id).unwrap())
                    .online
            })
            .count();
        if terminal.len() >= online {
            break;
        }
    }
    assert!(!terminal.is_empty(), "no invocation finished");
    for (instance_id, details, code) in &terminal {
        assert!(
            ["Success", "Failed", "ExecutionTimedOut"].contains(&details.as_str()),
            "{details}"
        );
        let invocation = client
            .get_command_invocation()
            .command_id(&command_id)
            .instance_id(instance_id)
            .send()
            .await
            .unwrap();
        assert_eq!(invocation.status_details(), Some(details.as_str()));
        assert_eq!(invocation.response_code(), *code);
    }
    let error = client
        .get_command_invocation()
        .command_id(&command_id)
        .instance_id("i-00000000000000000")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvocationDoesNotExist"));
    let error = client
        .list_command_invocations()
        .command_id("00000000-0000-0000-0000-000000000000")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvalidCommandId"));
    let listed = client
        .list_commands()
        .command_id(&command_id)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.commands().len(), 1);

    // Cancelling a running command cancels what has not finished.
    let slow = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .instance_ids(&ids[0])
        .timeout_seconds(3600)
        .send()
        .await
        .unwrap();
    let slow_id = slow.command().unwrap().command_id().unwrap().to_string();
    client
        .cancel_command()
        .command_id(&slow_id)
        .send()
        .await
        .unwrap();
    let after = client
        .list_command_invocations()
        .command_id(&slow_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.command_invocations()[0].status(),
        Some(&CommandInvocationStatus::Cancelled)
    );
    let error = client
        .cancel_command()
        .command_id("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvalidCommandId"));
}

#[tokio::test]
async fn send_command_validates_like_ssm() {
    let sim = start(FleetProfile::tiny()).await;
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let ids = all_instance_ids(&client, 50).await;
    let error = client
        .send_command()
        .document_name("No-Such-Doc")
        .instance_ids(&ids[0])
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvalidDocument"));
    let error = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .instance_ids(&ids[0])
        .timeout_seconds(10)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ValidationException"));
    let too_many: Vec<String> = (0..51).map(|_| ids[0].clone()).collect();
    let error = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .set_instance_ids(Some(too_many))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ValidationException"));
    let error = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ValidationException"));
    // Parameters as the document declares them (issue 33): one missing,
    // one undeclared, an Operation that is neither Scan nor Install.
    let error = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .instance_ids(&ids[0])
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvalidParameters"));
    for (name, value) in [("Operation", "Scan"), ("Operation", "Scna")] {
        let mut request = client
            .send_command()
            .document_name("AWS-RunPatchBaseline")
            .instance_ids(&ids[0])
            .parameters(name, vec![value.into()]);
        if value == "Scan" {
            request = request.parameters("RebootOptoin", vec!["NoReboot".into()]);
        }
        let error = request.send().await.unwrap_err();
        assert_eq!(error.code(), Some("InvalidParameters"), "{value}");
    }
    // DocumentVersion (issue 33): a version the document lacks is
    // InvalidDocumentVersion, one off SSM's pattern a ValidationException;
    // the version given is the one the command reports.
    let send = |version: &str| {
        client
            .send_command()
            .document_name("AWS-RunShellScript")
            .document_version(version)
            .parameters("commands", vec!["true".into()])
            .instance_ids(&ids[0])
            .send()
    };
    let error = send("7").await.unwrap_err();
    assert_eq!(error.code(), Some("InvalidDocumentVersion"));
    let error = send("v1").await.unwrap_err();
    assert_eq!(error.code(), Some("ValidationException"));
    let sent = send("$LATEST").await.unwrap();
    let command_id = sent.command().and_then(|c| c.command_id()).unwrap();
    let listed = client
        .list_commands()
        .command_id(command_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.commands()[0].document_version(),
        Some("$LATEST"),
        "ListCommands reports the version SendCommand was given"
    );
}

#[tokio::test]
async fn patch_scan_reports_missing_patches_and_install_clears_them() {
    let profile = FleetProfile {
        command_seconds: sim::profile::SecondsRange { min: 1.0, max: 1.0 },
        time_scale: 100.0,
        connection_lost_share: 0.0,
        outcomes: sim::profile::OutcomeMix {
            success: 1,
            failed: 0,
            timed_out: 0,
            undeliverable: 0,
        },
        missing_patches: sim::profile::MissingPatches {
            share_non_compliant: 1.0,
            max_critical: 3,
            max_security: 3,
            max_other: 3,
        },
        ..FleetProfile::tiny()
    };
    let sim = start(profile).await;
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let ids = all_instance_ids(&client, 50).await;
    let before = client
        .describe_instance_patch_states()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(before.instance_patch_states().len(), ids.len());
    let missing_before: i32 = before
        .instance_patch_states()
        .iter()
        .map(|s| s.missing_count())
        .sum();
    assert!(missing_before > 0);
    client
        .send_command()
        .document_name("AWS-RunPatchBaseline")
        .set_instance_ids(Some(ids.clone()))
        .parameters("Operation", vec!["Install".into()])
        .parameters("RebootOption", vec!["NoReboot".into()])
        .send()
        .await
        .unwrap();
    // 1 s delivery + 1 s run at 100× is 20 ms; allow up to 2 s.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = client
            .describe_instance_patch_states()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
            .unwrap();
        if after
            .instance_patch_states()
            .iter()
            .all(|s| s.operation().as_str() == "Install")
        {
            for state in after.instance_patch_states() {
                assert_eq!(state.missing_count(), 0);
                assert_eq!(state.critical_non_compliant_count(), Some(0));
            }
            let pending: i32 = after
                .instance_patch_states()
                .iter()
                .map(|s| s.installed_pending_reboot_count().unwrap_or(0))
                .sum();
            assert_eq!(
                pending, missing_before,
                "NoReboot leaves every installed patch pending a reboot"
            );
            return;
        }
    }
    panic!("install never completed");
}

#[tokio::test]
async fn organizations_lists_the_ou_tree_and_its_accounts() {
    let sim = start(FleetProfile::demo()).await;
    let client = organizations(&sim, caller(&sim));
    // Walk the tree from the root, as flotilla resolves OUs with child OUs.
    let mut accounts = BTreeSet::new();
    let mut parents = vec![sim.state.fleet.root_id()];
    while let Some(parent) = parents.pop() {
        let mut token = None;
        loop {
            let out = client
                .list_children()
                .parent_id(&parent)
                .child_type(aws_sdk_organizations::types::ChildType::OrganizationalUnit)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            parents.extend(out.children().iter().map(|c| c.id().unwrap().to_string()));
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        let mut token = None;
        loop {
            let out = client
                .list_accounts_for_parent()
                .parent_id(&parent)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            accounts.extend(out.accounts().iter().map(|a| a.id().unwrap().to_string()));
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    assert_eq!(accounts.len(), sim.state.fleet.profile.accounts as usize);
    let mut listed = 0;
    let mut token = None;
    loop {
        let out = client
            .list_accounts()
            .max_results(7)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        listed += out.accounts().len();
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(listed, accounts.len());
    let error = client
        .list_children()
        .parent_id("ou-nope-00000000")
        .child_type(aws_sdk_organizations::types::ChildType::Account)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ParentNotFoundException"));
    let member = organizations(&sim, assume(&sim, 3).await);
    let error = member.list_accounts().send().await.unwrap_err();
    assert_eq!(error.code(), Some("AccessDeniedException"));
}

#[tokio::test]
async fn hammering_sendcommand_is_throttled() {
    let mut profile = FleetProfile::tiny();
    profile.api_limits.send_command = Bucket {
        rate: 0.001,
        burst: 2.0,
    };
    let sim = start(profile).await;
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let ids = all_instance_ids(&client, 50).await;
    for _ in 0..2 {
        send_shell(&client, std::slice::from_ref(&ids[0]))
            .await
            .unwrap();
    }
    let error = send_shell(&client, std::slice::from_ref(&ids[0]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ThrottlingException"));
    assert_eq!(error.message(), Some("Rate exceeded"));
    // Buckets are per account-region: another region is unaffected.
    let other = ssm(&sim, assume(&sim, 1).await, "eu-west-1");
    let other_ids = all_instance_ids(&other, 50).await;
    send_shell(&other, std::slice::from_ref(&other_ids[0]))
        .await
        .unwrap();
    assert_eq!(
        sim.state.lock().stats.throttles.get("SendCommand"),
        Some(&1)
    );
}

#[tokio::test]
async fn a_retrying_sdk_sees_throttling_as_retryable() {
    let mut profile = FleetProfile::tiny();
    profile.api_limits.describe_instance_information = Bucket {
        rate: 0.001,
        burst: 1.0,
    };
    let sim = start(profile).await;
    let creds = assume(&sim, 1).await;
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(sim.endpoint_url())
        .credentials_provider(creds)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1)),
        )
        .build();
    let client = aws_sdk_ssm::Client::from_conf(config);
    client.describe_instance_information().send().await.unwrap();
    let error = client
        .describe_instance_information()
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ThrottlingException"));
    // The SDK retried: three attempts reached the simulator, all throttled.
    assert_eq!(
        sim.state
            .lock()
            .stats
            .throttles
            .get("DescribeInstanceInformation"),
        Some(&3)
    );
}

#[tokio::test]
async fn admin_faults_and_execution_counters() {
    let sim = start(FleetProfile::tiny()).await;
    let http = |path: &str| format!("{}/_sim/{path}", sim.endpoint_url());
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let ids = all_instance_ids(&client, 50).await;

    post_json(
        &http("faults"),
        r#"{"kind":"fail_next","operation":"SendCommand","code":"InternalServerError","count":1}"#,
    )
    .await;
    let error = send_shell(&client, std::slice::from_ref(&ids[0]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InternalServerError"));
    send_shell(&client, std::slice::from_ref(&ids[0]))
        .await
        .unwrap();
    send_shell(&client, std::slice::from_ref(&ids[0]))
        .await
        .unwrap();
    let runs = get_json(&http(&format!("executions/{}", ids[0]))).await;
    assert_eq!(
        runs["AWS-RunShellScript"], 2,
        "the failed call did not run anything: {runs}"
    );
    let totals = get_json(&http("executions")).await;
    assert_eq!(totals["max_per_instance_document"], 2);
    let stats = get_json(&http("stats")).await;
    assert_eq!(stats["calls"]["SendCommand"], 3);
    assert_eq!(stats["injected_failures"], 1);
    assert!(stats["last_mutating_call_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);

    post_json(
        &http("faults"),
        &format!(
            r#"{{"kind":"remove_role","account_id":"{}"}}"#,
            sim.state.fleet.account_id(2)
        ),
    )
    .await;
    let error = sts(&sim, caller(&sim))
        .assume_role()
        .role_arn(format!(
            "arn:aws:iam::{}:role/FlotillaExecutionRole",
            sim.state.fleet.account_id(2)
        ))
        .role_session_name("s1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("AccessDenied"));

    post_json(
        &http("faults"),
        r#"{"kind":"dark_region","region":"us-east-1"}"#,
    )
    .await;
    let error = client
        .describe_instance_information()
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ServiceUnavailable"));
    let fleet = get_json(&http("fleet")).await;
    assert_eq!(fleet["accounts"].as_array().unwrap().len(), 3);
}

/// A minimal HTTP/1.1 client over loopback for the admin surface.
async fn request(url: &str, method: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn post_json(url: &str, body: &str) {
    let (status, text) = request(url, "POST", body).await;
    assert_eq!(status, 204, "{text}");
}

async fn get_json(url: &str) -> serde_json::Value {
    let (status, text) = request(url, "GET", "").await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn send_command_by_tag_targets_reaches_exactly_the_tagged_instances() {
    let sim = start(FleetProfile {
        instances_per_location: sim::profile::CountRange { min: 40, max: 40 },
        ..FleetProfile::tiny()
    })
    .await;
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let target = aws_sdk_ssm::types::Target::builder()
        .key("tag:PatchGroup")
        .values("db")
        .build();
    let sent = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .targets(target)
        .send()
        .await
        .unwrap();
    let command = sent.command().unwrap();
    let expected: Vec<String> = (0..40)
        .map(|index| {
            sim.state.fleet.instance(sim::fleet::InstanceKey {
                account: 1,
                region: 0,
                index,
            })
        })
        .filter(|i| i.tags.contains(&("PatchGroup".into(), "db".into())))
        .map(|i| i.id)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(command.instance_ids(), expected.as_slice());
    let six: Vec<_> = (0..6)
        .map(|n| {
            aws_sdk_ssm::types::Target::builder()
                .key(format!("tag:K{n}"))
                .values("v")
                .build()
        })
        .collect();
    let error = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .set_targets(Some(six))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ValidationException"));
}

#[tokio::test]
async fn too_many_pending_invocations_in_an_account_are_refused() {
    let profile = FleetProfile {
        max_pending_invocations_per_account: 15,
        command_seconds: sim::profile::SecondsRange {
            min: 3600.0,
            max: 3600.0,
        },
        time_scale: 1.0,
        ..FleetProfile::tiny()
    };
    let sim = start(profile).await;
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let ids = all_instance_ids(&client, 50).await;
    send_shell(&client, &ids[..8]).await.unwrap();
    let error = send_shell(&client, &ids[..8]).await.unwrap_err();
    assert_eq!(error.code(), Some("ThrottlingException"));
    send_shell(&client, &ids[..7]).await.unwrap();
}

#[tokio::test]
async fn send_command_by_instance_id_target_reaches_only_those_instances() {
    let sim = start(FleetProfile::tiny()).await;
    let client = ssm(&sim, assume(&sim, 1).await, "us-east-1");
    let ids = all_instance_ids(&client, 50).await;
    let target = aws_sdk_ssm::types::Target::builder()
        .key("InstanceIds")
        .values(&ids[1])
        .values(&ids[4])
        .build();
    let sent = client
        .send_command()
        .document_name("AWS-RunShellScript")
        .parameters("commands", vec!["true".into()])
        .targets(target)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sent.command().unwrap().instance_ids(),
        [ids[1].clone(), ids[4].clone()]
    );
}
