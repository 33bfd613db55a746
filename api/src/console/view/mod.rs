//! The console's pages as HTML, by maud: every value is escaped as it is
//! spliced in, so ids, reasons and failure text from hosts never become
//! markup. No inline script or style (the CSP forbids both): bars are
//! `<progress>` and `<meter>`, colours are classes, charts are SVG.

mod campaigns;
mod compliance;
mod runs;

pub use self::campaigns::{CampaignDetail, CampaignRow, campaign_page, campaigns_page};
pub use self::compliance::{compliance_page, trend_chart};
pub use self::runs::{
    LOCATION_INSTANCES, LocationInstances, location_instances, run_actions, run_live, run_page,
    runs_page, runs_table,
};

use maud::{DOCTYPE, Markup, html};

use scheduler::auth::{Permission, Principal};

/// What every page shows around its content.
pub struct Frame<'a> {
    pub principal: &'a Principal,
    pub csrf: &'a str,
    /// The global kill switch's reason, when it is engaged.
    pub kill: Option<&'a str>,
}

impl Frame<'_> {
    /// Whether to show a button: the server checks again on every request.
    pub fn may(&self, permission: Permission) -> bool {
        self.principal.role.allows(permission)
    }
}

/// Every console document: its head (the stylesheet; the script on pages
/// with live parts) around `body`.
fn document(title: &str, body_class: &str, live: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · flotilla" }
                link rel="stylesheet" href="/ui/static/console.css";
                @if live { script src="/ui/static/console.js" defer {} }
            }
            body class=[(!body_class.is_empty()).then_some(body_class)] { (body) }
        }
    }
}

pub fn page(frame: &Frame, title: &str, content: Markup) -> Markup {
    let body = html! {
                header {
                    a.brand href="/ui/runs" { "flotilla" }
                    nav {
                        a href="/ui/runs" { "Runs" }
                        a href="/ui/campaigns" { "Campaigns" }
                        a href="/ui/compliance" { "Compliance" }
                    }
                    span.who { (frame.principal.name) " (" (frame.principal.role) ")" }
                    form.inline method="post" action="/ui/logout" {
                        input type="hidden" name="csrf" value=(frame.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                (kill_switch(frame))
                main { h1 { (title) } (content) }
    };
    document(title, "", true, body)
}

/// The kill switch on every page: its state, and engage or release with a
/// reason and a confirmation.
fn kill_switch(frame: &Frame) -> Markup {
    html! {
        @match frame.kill {
            Some(reason) => {
                section #kill .engaged {
                    strong { "KILL SWITCH ENGAGED" } " — " span #kill-reason { (reason) }
                    " Every worker has stopped sending commands."
                    @if frame.may(Permission::ReleaseKill) { form.inline method="post" action="/ui/kill/release" {
                        input type="hidden" name="csrf" value=(frame.csrf);
                        input type="text" name="reason" placeholder="why release" required maxlength="1024";
                        label { input type="checkbox" name="confirm" value="yes" required; " I confirm" }
                        button #kill-release type="submit" { "Release" }
                    } }
                }
            }
            None => {
                section #kill .released {
                    span #kill-state { "Kill switch released." }
                    @if frame.may(Permission::EngageKill) { details {
                        summary { "Engage the kill switch" }
                        form.inline method="post" action="/ui/kill" {
                            input type="hidden" name="csrf" value=(frame.csrf);
                            input #kill-reason-input type="text" name="reason" placeholder="why everything stops" required maxlength="1024";
                            label { input #kill-confirm type="checkbox" name="confirm" value="yes" required; " stop every worker now" }
                            button #kill-engage .danger type="submit" { "Engage" }
                        }
                    } }
                }
            }
        }
    }
}

/// The sign-in form; `preset` names who signs in without a token (anonymous
/// without authentication, or a client certificate's principal).
pub fn login(message: Option<&str>, next: &str, preset: Option<&str>, login_csrf: &str) -> Markup {
    let body = html! {
                main {
                    h1 { "flotilla" }
                    @if let Some(message) = message { p.error { (message) } }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        input type="hidden" name="login_csrf" value=(login_csrf);
                        @if let Some(name) = preset {
                            p { "You sign in as " code { (name) } @if name == "anonymous" { " (this scheduler runs without authentication, on loopback only)" } @else { " (your client certificate)" } "." }
                        } @else {
                            label for="token" { "API token" }
                            input #token type="password" name="token" autocomplete="off" required maxlength="4096";
                            p.hint { "A flotilla token (" code { "flotilla token create" } ") or your SSO token. The console keeps a session cookie, never the token." }
                        }
                        button #sign-in type="submit" { "Sign in" }
                    }
                }
    };
    document("Sign in", "login", false, body)
}

/// Without authentication: the session is made, the page moves on to `next`
/// by itself (a same-site navigation, so the new cookie goes with it).
pub fn entering(next: &str) -> Markup {
    let body = html! {
        main {
            h1 { "flotilla" }
            p { "This scheduler runs without authentication (loopback only): you are " code { "anonymous" } ". "
                a #enter href=(next) { "Enter the console" } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(format!("0; url={next}"));
                title { "flotilla" }
            }
            body { (body) }
        }
    }
}

pub fn error(status: u16, message: &str) -> Markup {
    let body = html! {
        main {
            h1 { "Not done (" (status) ")" }
            p.error #error { (message) }
            p { a href="/ui/runs" { "Back to the runs" } }
        }
    };
    document("Error", "", false, body)
}

/// `3m`, `2h`, `5d` since `then`.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "–".into();
    }
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// The first characters of an id, for tables.
pub(super) fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::runs::cell_class;
    use super::*;
    use scheduler::ledger::LocationStatus;

    fn location(state: &str, results: u64, failed: u64, failure: Option<&str>) -> LocationStatus {
        LocationStatus {
            account_id: "111111111111".into(),
            region: "us-east-1".into(),
            state: state.into(),
            targets: results,
            batches_left: 0,
            failure: failure.map(String::from),
            results,
            target_failures: failed,
        }
    }

    #[test]
    fn a_cell_shows_its_state_and_any_failure_share_in_fifths() {
        assert_eq!(cell_class(&location("done", 100, 0, None)), "cell done f0");
        assert_eq!(
            cell_class(&location("done", 100, 1, None)),
            "cell done f1",
            "one failure shows"
        );
        assert_eq!(cell_class(&location("done", 100, 50, None)), "cell done f3");
        assert_eq!(
            cell_class(&location("active", 10, 10, None)),
            "cell active f5"
        );
        assert_eq!(
            cell_class(&location("waiting", 0, 0, None)),
            "cell waiting f0"
        );
        assert_eq!(
            cell_class(&location("done", 0, 0, Some("AccessDenied"))),
            "cell failed f0"
        );
    }

    #[test]
    fn ages_read_in_the_largest_whole_unit() {
        let now = 10 * 86_400_000;
        assert_eq!(age(now, now - 5_000), "5s");
        assert_eq!(age(now, now - 125_000), "2m");
        assert_eq!(age(now, now - 7_200_000), "2h");
        assert_eq!(age(now, now - 3 * 86_400_000), "3d");
        assert_eq!(age(now, 0), "–");
        assert_eq!(age(now, now + 5_000), "0s", "a clock ahead is not negative");
    }
}
