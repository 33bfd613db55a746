//! Files the scheduler writes that hold secrets or results — tokens,
//! results, audit records: never readable by group or others, and still so
//! after every rewrite (a new file is created with the mode, then renamed
//! over the old one).

use std::io::Write as _;
use std::path::Path;

/// Creates (or truncates) `path` readable and writable by its owner only.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates `dir` and its missing parents, each new one for its owner only.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Replaces `path` with `body` so a reader sees all of it or nothing: a
/// private temporary file beside it, fsync, rename.
pub fn replace_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no directory", path.display())))?;
    create_private_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = create_private(&temporary).and_then(|mut file| {
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    });
    if written.is_err() {
        // A full disk keeps failing every minute until it is freed: a
        // partial file left each time would keep it full.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaced_files_and_new_directories_are_the_owners_only() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("a/b/file");
        super::replace_private(&path, b"one").unwrap();
        super::replace_private(&path, b"two").unwrap();
        let mode =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&root.path().join("a/b")), 0o700);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
    }
}
