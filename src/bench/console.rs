//! The `console` scenario: the web console's heaviest pages at the sizes the
//! issue names, timed over HTTP on loopback (so "server time" here includes
//! one loopback round trip, which is well under a millisecond). A scheduler,
//! two workers and the simulator run in this process on RabbitMQ and Redis
//! (`flotilla demo`'s stack); a scan over 1,000 locations (500 accounts × 2
//! regions) runs to its end, then its run page is fetched 20 times; 99 plans
//! of one account make 100 runs for the runs list; 100,000 instances are written into the fleet compliance view, then
//! `/ui/compliance` and `GET /compliance` are fetched as often.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::cluster::scan_campaign;
use super::probe::percentile;
use super::scenarios::Bench;
use crate::client::ApiClient;

/// Fetches of each page.
const SAMPLES: usize = 20;
const LOCATIONS_ACCOUNTS: u32 = 500;
const COMPLIANCE_INSTANCES: usize = 100_000;
/// Runs in the runs list.
const RUNS: usize = 100;

#[derive(Debug, Serialize)]
pub(super) struct PageTimes {
    pub(super) page: String,
    pub(super) samples: usize,
    pub(super) bytes: usize,
    pub(super) median_ms: f64,
    pub(super) p95_ms: f64,
    pub(super) max_ms: f64,
}

pub(super) fn console(bench: &Bench, out: &mut dyn Write) -> anyhow::Result<(&'static str, Value)> {
    let mut fleet = bench.scan_fleet.clone();
    fleet.accounts = LOCATIONS_ACCOUNTS;
    fleet.regions = vec!["us-east-1".into(), "eu-west-1".into()];
    fleet.instances_per_location = sim::profile::CountRange { min: 2, max: 2 };
    let args = bench.args;
    let stack = bench.runtime.block_on(crate::demo::Stack::start(
        &args.amqp_url,
        &args.redis_url,
        2,
        fleet.clone(),
        Some(&bench.results),
    ))?;
    let measured = measure(bench, &stack, &fleet);
    bench.runtime.block_on(stack.stop())?;
    let pages = measured?;
    writeln!(
        out,
        "console (server time over loopback, {SAMPLES} fetches each):"
    )?;
    for page in &pages {
        writeln!(
            out,
            "  {:<44} median {:>7.1} ms  p95 {:>7.1} ms  max {:>7.1} ms  ({} KiB)",
            page.page,
            page.median_ms,
            page.p95_ms,
            page.max_ms,
            page.bytes / 1024
        )?;
    }
    Ok(("console", serde_json::to_value(&pages)?))
}

fn measure(
    bench: &Bench,
    stack: &crate::demo::Stack,
    fleet: &sim::FleetProfile,
) -> anyhow::Result<Vec<PageTimes>> {
    let api = ApiClient::new(&stack.api_url);
    crate::demo::wait_until_ready(&api)?;
    let campaign = scan_campaign("bench-console", fleet, 50.0, &bench.results);
    let _: Value = api.post("/campaigns", "application/json", campaign.to_string())?;
    let started: Value = api.post_json("/campaigns/bench-console/runs", &json!({}))?;
    let run_id: Uuid = serde_json::from_value(started["run_id"].clone())?;
    let began = Instant::now();
    loop {
        let runs: Vec<scheduler::RunProgress> = api.get("/runs?campaign=bench-console")?;
        if runs.first().is_some_and(|progress| progress.finished) {
            break;
        }
        if began.elapsed() > Duration::from_secs(900) {
            bail!("the console scenario's scan did not finish within 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bench.runtime.block_on(seed_compliance(
        &bench.args.redis_url,
        stack.names(),
        COMPLIANCE_INSTANCES,
    ))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(scheduler::ureq_tls().build())
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    // 99 more runs (plans of one account, so they finish at once): the runs
    // list pages through 100.
    let mut small = fleet.clone();
    small.accounts = 1;
    let mut plans = scan_campaign("bench-console-plans", &small, 50.0, &bench.results);
    plans["accounts"] = json!({"ids": [sim::fleet::account_id(0)]});
    let _: Value = api.post("/campaigns", "application/json", plans.to_string())?;
    for _ in 0..RUNS - 1 {
        let _: Value = api.post_json(
            "/campaigns/bench-console-plans/runs",
            &json!({"plan_only": true}),
        )?;
    }
    // Measured once they are all through, so their work does not compete.
    let began = Instant::now();
    loop {
        let plans: Vec<scheduler::RunProgress> =
            api.get("/runs?campaign=bench-console-plans&limit=1000")?;
        if plans.len() >= RUNS - 1 && plans.iter().all(|progress| progress.finished) {
            break;
        }
        if began.elapsed() > Duration::from_secs(300) {
            bail!("the console scenario's 99 plans did not finish within 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let cookie = sign_in(&agent, &stack.api_url)?;
    let base = &stack.api_url;
    let mut pages = Vec::new();
    for (name, path, with_cookie) in [
        (
            "/ui/runs/{id} (1,000 locations)",
            format!("/ui/runs/{run_id}"),
            true,
        ),
        (
            "/ui/runs/{id}?fragment=1 (the live part)",
            format!("/ui/runs/{run_id}?fragment=1"),
            true,
        ),
        (
            "/ui/runs (page 1 of 100 runs)",
            "/ui/runs".to_string(),
            true,
        ),
        (
            "/ui/runs?page=4 (the oldest 25)",
            "/ui/runs?page=4".to_string(),
            true,
        ),
        (
            "/ui/compliance (100,000 instances)",
            "/ui/compliance".to_string(),
            true,
        ),
        (
            "GET /compliance (100,000 instances)",
            "/compliance".to_string(),
            false,
        ),
    ] {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut bytes = 0;
        for _ in 0..SAMPLES {
            let mut request = agent.get(format!("{base}{path}"));
            if with_cookie {
                request = request.header("Cookie", format!("flotilla_session={cookie}"));
            }
            let began = Instant::now();
            let mut response = request.call().with_context(|| format!("GET {path}"))?;
            let body = response.body_mut().read_to_string()?;
            times.push(began.elapsed().as_secs_f64() * 1000.0);
            if response.status() != 200 {
                bail!("GET {path}: HTTP {}: {body}", response.status());
            }
            bytes = body.len();
        }
        times.sort_by(f64::total_cmp);
        pages.push(PageTimes {
            page: name.to_string(),
            samples: SAMPLES,
            bytes,
            median_ms: percentile(&times, 0.5),
            p95_ms: percentile(&times, 0.95),
            max_ms: times.last().copied().unwrap_or(f64::NAN),
        });
    }
    Ok(pages)
}

/// Signs in to a scheduler without authentication (the demo's): the cookie.
fn sign_in(agent: &ureq::Agent, base: &str) -> anyhow::Result<String> {
    // Without authentication the console enters at once as anonymous.
    let response = agent
        .get(format!("{base}/ui/login?next=%2Fui%2Fruns"))
        .call()?;
    response
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("flotilla_session="))
        .and_then(|value| value.split(';').next())
        .map(String::from)
        .context("signing in to the console set no session cookie")
}

/// Writes `count` instances' latest compliance (one in five non-compliant)
/// into the view, as scans would have.
async fn seed_compliance(
    redis_url: &str,
    names: &protocol::names::Names,
    count: usize,
) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let now = super::probe::unix_ms();
    let run_id = Uuid::new_v4();
    for chunk in (0..count).collect::<Vec<_>>().chunks(5_000) {
        let mut pipe = redis::pipe();
        for &index in chunk {
            let missing = u32::from(index % 5 == 0) * 3;
            let state = scheduler::compliance::InstanceCompliance {
                instance_id: format!("i-{index:017x}"),
                account_id: format!("{:012}", 200_000_000_000u64 + (index % 2_000) as u64),
                region: if index % 2 == 0 {
                    "us-east-1"
                } else {
                    "eu-west-1"
                }
                .into(),
                campaign: "bench-console".into(),
                run_id,
                reported_ms: now,
                missing,
                failed: 0,
                pending_reboot: 0,
                critical: u32::from(index % 15 == 0),
                security: missing.min(1),
                other: 0,
            };
            pipe.hset(
                names.compliance_key(),
                &state.instance_id,
                serde_json::to_string(&state)?,
            );
        }
        let () = pipe.query_async(&mut connection).await?;
    }
    Ok(())
}
