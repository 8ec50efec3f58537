//! SQLite database files: the URL gets `mode=rwc` and a missing file is
//! created first, readable only by its owner.

use crate::store::StoreError;

/// Creates the database file (and its directory) if missing and makes sure
/// the URL lets SQLite create it (`mode=rwc` unless a mode is given).
pub(super) fn prepare_sqlite_url(raw: &str) -> Result<String, StoreError> {
    let path_part = raw.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path_part.split('?').next().unwrap_or_default();
    if !path.is_empty() && path != ":memory:" {
        let file = std::path::Path::new(path);
        if let Some(parent) = file.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create directory {}: {e}", parent.display()))
                })?;
            }
        }
        create_owner_only(file)?;
    }
    Ok(if raw.contains("mode=") {
        raw.to_owned()
    } else if raw.contains('?') {
        format!("{raw}&mode=rwc")
    } else {
        format!("{raw}?mode=rwc")
    })
}

/// Creates a missing database file readable only by its owner (SQLite
/// gives its journal files the same mode).
fn create_owner_only(file: &std::path::Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(file) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(StoreError::Unavailable(format!(
            "cannot create {}: {error}",
            file.display()
        ))),
    }
}
