//! A log line budget per key (a sandbox): at most a number of lines a second each; the
//! rest are counted, so that one line can say how many were left out. A client that
//! hammers one sandbox so costs the log a few lines a second, not one per request. The
//! same budget bounds other work a stranger can ask for (the E2B listener's lookups of
//! signed file URLs that name no sandbox).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Keys whose counts are kept; past it they all start afresh.
const KEPT: usize = 4096;

#[derive(Debug, Default)]
struct Window {
    second: u64,
    logged: u32,
    left_out: u64,
}

/// See the module doc.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    windows: Mutex<HashMap<String, Window>>,
}

impl LogLimit {
    pub fn new(per_second: u32) -> LogLimit {
        LogLimit {
            per_second,
            windows: Mutex::default(),
        }
    }

    /// Whether to log a line about `key` now; and how many about it were left out in
    /// the seconds before, to be said once.
    pub fn admit(&self, key: &str) -> (bool, u64) {
        self.admit_at(key, seconds())
    }

    /// [`admit`](Self::admit) at second `now` of the process.
    fn admit_at(&self, key: &str, now: u64) -> (bool, u64) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        // A key already counted costs no allocation: every exec passes here.
        if !w.contains_key(key) {
            if w.len() >= KEPT {
                w.clear();
            }
            w.insert(key.to_string(), Window::default());
        }
        let Some(win) = w.get_mut(key) else {
            return (true, 0);
        };
        let mut said = 0;
        if win.second != now {
            said = std::mem::take(&mut win.left_out);
            win.second = now;
            win.logged = 0;
        }
        if win.logged < self.per_second {
            win.logged += 1;
            (true, said)
        } else {
            win.left_out += 1;
            (false, said)
        }
    }
}

/// Seconds since the process first asked.
fn seconds() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_about_one_key_is_cut_to_a_few_lines_and_counted() {
        let limit = LogLimit::new(10);
        let admitted = (0..100).filter(|_| limit.admit_at("a", 7).0).count();
        assert_eq!(admitted, 10);
        // Another key is counted apart.
        assert!(limit.admit_at("b", 7).0);
        // The next second logs again and says how many were left out.
        assert_eq!(limit.admit_at("a", 8), (true, 90));
        assert_eq!(limit.admit_at("a", 8), (true, 0));
    }
}
