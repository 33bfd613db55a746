//! `flotilla keys`: the Ed25519 keys that sign jobs and reports, and the
//! settings services load them from (files or environment, never Redis or
//! the broker). See `protocol::signing` for who signs what.
//!
//! Rotation without downtime, for either kind of key:
//! 1. `flotilla keys rotate --key K --keyring R` writes a new key to K (the
//!    old one to K.old) and adds its public line to R beside the old one;
//! 2. give every service the new keyring R and restart them one by one (they
//!    now trust both keys);
//! 3. restart the services that sign with K (they now sign with the new key);
//! 4. after the longest message age (`--max-message-age`), `flotilla keys
//!    retire --id OLD --keyring R` and roll R out again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use protocol::signing::{Keyring, MAX_KEY_TEXT_BYTES, SignerKind, SigningIdentity};

/// Where a service's keys come from.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// This service's signing key, as written by `flotilla keys generate`
    /// (or the key itself in FLOTILLA_SIGNING_KEY).
    #[arg(long, env = "FLOTILLA_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The keyring: the public keys this service trusts, one `<kind> <id>
    /// <base64>` line each (or the lines in FLOTILLA_TRUSTED_KEYS, `;`-separated).
    #[arg(long, env = "FLOTILLA_TRUSTED_KEYS_FILE")]
    pub trusted_keys_file: Option<PathBuf>,
    /// Jobs and reports signed longer ago than this are refused as replays.
    #[arg(long, env = "FLOTILLA_MAX_MESSAGE_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub max_message_age: Duration,
}

const SIGNING_KEY_ENV: &str = "FLOTILLA_SIGNING_KEY";
const TRUSTED_KEYS_ENV: &str = "FLOTILLA_TRUSTED_KEYS";

impl KeyArgs {
    /// The keyring of a service that signs as `kind`; an error says which
    /// flag or variable is missing or wrong.
    pub fn keyring(&self, kind: SignerKind) -> anyhow::Result<Keyring> {
        let trusted = match (&self.trusted_keys_file, std::env::var(TRUSTED_KEYS_ENV)) {
            (Some(path), _) => read_key_text(path, "keyring")?,
            (None, Ok(text)) => text,
            (None, Err(_)) => bail!(
                "no keyring: pass --trusted-keys-file (FLOTILLA_TRUSTED_KEYS_FILE) or set {TRUSTED_KEYS_ENV}; `flotilla keys generate` makes keys and their keyring"
            ),
        };
        let signing = match (&self.signing_key_file, std::env::var(SIGNING_KEY_ENV)) {
            (Some(path), _) => Some(read_key_text(path, "signing key")?),
            (None, Ok(text)) => Some(text),
            (None, Err(_)) => None,
        };
        let mut keyring = Keyring::parse_trusted(&trusted)
            .context("reading the keyring")?
            .with_max_age(self.max_message_age);
        if let Some(text) = signing {
            let identity = SigningIdentity::parse(&text).context("reading the signing key")?;
            keyring = keyring.signing_as(identity);
        }
        keyring.require_signer(kind)?;
        Ok(keyring)
    }
}

fn read_key_text(path: &Path, what: &str) -> anyhow::Result<String> {
    let bytes = api::auth::read_bounded(path, MAX_KEY_TEXT_BYTES as u64, what)
        .map_err(anyhow::Error::msg)?;
    String::from_utf8(bytes).with_context(|| format!("{what} {} is not UTF-8", path.display()))
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a signing key (written readable by its owner only) and add its
    /// public half to a keyring.
    Generate {
        /// scheduler (signs jobs) or worker (signs reports, polls, next pages).
        #[arg(long)]
        kind: SignerKind,
        /// The key's id (A-Z a-z 0-9 . _ -; default: kind and date).
        #[arg(long)]
        id: Option<String>,
        /// Where the signing key goes (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// The keyring to add the public key to (created if missing).
        #[arg(long)]
        keyring: PathBuf,
    },
    /// Replace a signing key by a new one of the same kind: the old key moves
    /// to KEY.old, the new key's public line joins the keyring beside the old.
    Rotate {
        /// The signing key file to replace.
        #[arg(long)]
        key: PathBuf,
        /// The keyring the new public key joins.
        #[arg(long)]
        keyring: PathBuf,
        /// The new key's id (default: kind and time).
        #[arg(long)]
        id: Option<String>,
    },
    /// Remove a key from a keyring (once no message signed with it can be
    /// young enough to be accepted).
    Retire {
        /// The id of the key to remove, as the keyring lists it.
        #[arg(long)]
        id: String,
        /// The keyring to remove it from.
        #[arg(long)]
        keyring: PathBuf,
    },
}

pub fn keys(
    command: KeysCommand,
    output: crate::commands::OutputArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    // With `--format json`: what was done, as one object (paths and ids,
    // never a key's secret).
    let said = match command {
        KeysCommand::Generate {
            kind,
            id,
            out: path,
            keyring,
        } => {
            let id = id.unwrap_or_else(|| default_id(kind));
            let identity = SigningIdentity::generate(kind, &id)?;
            write_secret(&path, &identity.to_secret_text(), false)?;
            add_to_keyring(&keyring, &identity)?;
            (
                format!(
                    "{} key {id} written to {}; its public key is in {}",
                    kind.as_str(),
                    path.display(),
                    keyring.display()
                ),
                serde_json::json!({
                    "generated": id,
                    "kind": kind.as_str(),
                    "key_file": path.display().to_string(),
                    "keyring": keyring.display().to_string(),
                }),
            )
        }
        KeysCommand::Rotate { key, keyring, id } => {
            let old = SigningIdentity::parse(&read_key_text(&key, "signing key")?)
                .context("reading the key to rotate")?;
            let id = id.unwrap_or_else(|| default_id(old.kind));
            if id == old.id {
                bail!("the new key needs an id other than the old one's ({id:?})");
            }
            let new = SigningIdentity::generate(old.kind, &id)?;
            add_to_keyring(&keyring, &new)?;
            let retired = PathBuf::from(format!("{}.old", key.display()));
            write_secret(&retired, &old.to_secret_text(), true)?;
            write_secret(&key, &new.to_secret_text(), true)?;
            (
                format!(
                    "{} key {id} replaces {} in {} (the old key is in {}).\n\
                     Next: roll out {} to every service, then restart the services signing with {};\n\
                     after --max-message-age, `flotilla keys retire --id {} --keyring {}`.",
                    old.kind.as_str(),
                    old.id,
                    key.display(),
                    retired.display(),
                    keyring.display(),
                    key.display(),
                    old.id,
                    keyring.display()
                ),
                serde_json::json!({
                    "generated": id,
                    "kind": old.kind.as_str(),
                    "replaces": old.id,
                    "key_file": key.display().to_string(),
                    "old_key_file": retired.display().to_string(),
                    "keyring": keyring.display().to_string(),
                }),
            )
        }
        KeysCommand::Retire { id, keyring } => {
            let text = read_key_text(&keyring, "keyring")?;
            // Parsed first: a keyring that does not read is not rewritten.
            Keyring::parse_trusted(&text).context("reading the keyring")?;
            let mut removed = 0;
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| {
                    let named = line.split_whitespace().nth(1) == Some(id.as_str())
                        && !line.trim_start().starts_with('#');
                    removed += usize::from(named);
                    !named
                })
                .collect();
            if removed == 0 {
                bail!("key {id:?} is not in {}", keyring.display());
            }
            let remaining = Keyring::parse_trusted(&kept.join("\n"))?;
            if remaining.trusted_ids().is_empty() {
                bail!("retiring {id:?} would leave {} empty", keyring.display());
            }
            write_secret(&keyring, &(kept.join("\n") + "\n"), true)?;
            (
                format!("key {id} removed from {}", keyring.display()),
                serde_json::json!({ "retired": id, "keyring": keyring.display().to_string() }),
            )
        }
    };
    let (line, json) = said;
    if output.json() {
        crate::commands::print_json(out, &json)?;
    } else {
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn default_id(kind: SignerKind) -> String {
    format!(
        "{}-{}",
        kind.as_str(),
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    )
}

/// Appends the key's public line, refusing a keyring that does not read or
/// that has the id already.
fn add_to_keyring(path: &Path, identity: &SigningIdentity) -> anyhow::Result<()> {
    let mut text = match path.exists() {
        true => read_key_text(path, "keyring")?,
        false => String::new(),
    };
    let existing = Keyring::parse_trusted(&text).context("reading the keyring")?;
    if existing
        .trusted_ids()
        .iter()
        .any(|(_, id)| *id == identity.id)
    {
        bail!("key id {:?} is in {} already", identity.id, path.display());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&identity.public_line());
    text.push('\n');
    write_secret(path, &text, true)
}

/// Writes a file readable by its owner only (keys; keyrings too, as they
/// decide whom a deployment believes): to a temporary file, then renamed.
fn write_secret(path: &Path, text: &str, replace: bool) -> anyhow::Result<()> {
    if !replace && path.exists() {
        bail!("{} exists; not overwriting a key", path.display());
    }
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        // A directory of keys is the owner's only.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600))?;
    }
    file.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
