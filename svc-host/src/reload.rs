//! Files a process re-reads without a restart: TLS certificates, CURVE
//! authorised keys, the admin token.
//!
//! Each watched set of files is checked every [`POLL`] (modification
//! time, inode and length, so rewriting in place, renaming over and adding
//! or removing a file in a directory are all seen) and re-read on SIGHUP.
//! A reload that fails (a half-written file, a key that does not parse)
//! keeps what was loaded before and is logged once per distinct problem;
//! the files are then tried again on every tick, because the other half of
//! a change (a certificate's key) may land a moment later.
//!
//! One thread per watch, with a current-thread runtime of its own: a
//! process has at most a few, and they never touch the request path.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How often watched files are checked for a change.
pub const POLL: Duration = Duration::from_secs(1);

/// What a file looked like; `None`: missing or unreadable.
pub type Stamp = Option<(SystemTime, u64, u64)>;

/// A file's stamp.
pub fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

/// A directory's stamp and every entry's, by name.
pub fn dir_stamps(dir: &Path) -> Vec<Stamp> {
    let mut out = vec![stamp(dir)];
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut paths: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        out.extend(paths.iter().map(|p| stamp(p)));
    }
    out
}

/// Calls `reload` on SIGHUP and whenever `stamps` changes, on a thread of
/// its own for the life of the process. `reload` returns a short summary
/// for the log (`"3 keys"`) or every problem found. The SIGHUP handler is
/// in place when this returns.
pub fn watch<S, R>(what: &'static str, stamps: S, reload: R) -> std::io::Result<()>
where
    S: Fn() -> Vec<Stamp> + Send + 'static,
    R: Fn() -> Result<String, Vec<String>> + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut hup = {
        let _in = rt.enter();
        signal(SignalKind::hangup())?
    };
    // Taken now, not on the thread: a change made right after this returns
    // must count as a change.
    let mut seen = stamps();
    std::thread::Builder::new()
        .name(format!(
            "reload-{}",
            what.split_whitespace().next().unwrap_or("files")
        ))
        .spawn(move || {
            rt.block_on(async move {
                let mut last_error: Option<Vec<String>> = None;
                let mut tick = tokio::time::interval(POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let cause = tokio::select! {
                        _ = hup.recv() => "SIGHUP",
                        _ = tick.tick() => "files changed",
                    };
                    let now = stamps();
                    if cause != "SIGHUP" && now == seen && last_error.is_none() {
                        continue;
                    }
                    seen = now;
                    match reload() {
                        Ok(summary) => {
                            last_error = None;
                            tracing::info!(cause, loaded = %summary, "{what} reloaded");
                        }
                        Err(e) => {
                            if last_error.as_ref() != Some(&e) {
                                tracing::warn!(
                                    cause,
                                    problems = %e.join("; "),
                                    "{what} not reloaded; the previous ones stay in force"
                                );
                            }
                            last_error = Some(e);
                        }
                    }
                }
            })
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_changed_file_and_a_new_file_in_a_directory_change_the_stamps() {
        let d = std::env::temp_dir().join(format!("reload-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a"), "one").unwrap();
        let before = dir_stamps(&d);
        assert_eq!(before, dir_stamps(&d));
        std::fs::write(d.join("a"), "two!").unwrap();
        let after = dir_stamps(&d);
        assert_ne!(before, after, "a longer rewrite changes the length");
        std::fs::write(d.join("b"), "x").unwrap();
        assert_ne!(after, dir_stamps(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_reload_is_retried_until_it_succeeds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let looked = AtomicUsize::new(0);
        // The files change once (after the first look), then never again.
        let stamps = move || match looked.fetch_add(1, Ordering::SeqCst) {
            0 => Vec::new(),
            _ => vec![None],
        };
        watch("test files", stamps, move || {
            // Fails twice, then loads: the watch must keep trying even
            // though the stamps no longer change.
            match c.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(vec!["not yet".into()]),
                _ => Ok("done".into()),
            }
        })
        .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(calls.load(Ordering::SeqCst) >= 3);
    }
}
