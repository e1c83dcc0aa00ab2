//! Compiled rule sets shared by every policy and snapshot that requests the same rules.
//!
//! Compiling the CRS takes far longer than a configuration reload should, so a rule set is
//! compiled once per rules directory and [`Setup`], and compiled again only when a file in that
//! directory changed (its name, size or modification time). The cache keeps at most
//! [`MAX_CACHED_SETS`] sets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::{Error, RuleSet, Setup};

/// Name, size and modification time of every file in a rules directory, in name order.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Compiled sets kept for later loads. A compiled CRS takes tens of megabytes, and a
/// deployment needs one per distinct rules directory, paranoia level and threshold.
pub const MAX_CACHED_SETS: usize = 16;

type Key = (Option<PathBuf>, Setup);

struct Entry {
    fingerprint: Fingerprint,
    set: Arc<RuleSet>,
    /// Value of `Cache::clock` at the last load that returned this set.
    last_used: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Entry>,
    clock: u64,
}

impl Cache {
    /// Evicts entries until there is room for one more. It picks the least recently used set
    /// that no caller references any more, or else the least recently used set.
    fn make_room(&mut self) {
        while self.entries.len() >= MAX_CACHED_SETS {
            let unused = self
                .entries
                .iter()
                .filter(|(_, entry)| Arc::strong_count(&entry.set) == 1)
                .min_by_key(|(_, entry)| entry.last_used);
            let victim = unused
                .or_else(|| self.entries.iter().min_by_key(|(_, entry)| entry.last_used))
                .map(|(key, _)| key.clone());
            match victim {
                Some(key) => self.entries.remove(&key),
                None => return,
            };
        }
    }
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// Returns the rule set of `dir` (every `*.conf` file in name order, see [`RuleSet::load`]),
/// or the built-in rule set when `dir` is `None`, compiled after the `setup` rules. A second
/// call with the same arguments returns the same compiled set while the directory's files are
/// unchanged and the set has not been evicted to keep the cache at [`MAX_CACHED_SETS`].
pub fn load_shared(dir: Option<&Path>, setup: &Setup) -> Result<Arc<RuleSet>, Error> {
    let fingerprint = match dir {
        Some(dir) => fingerprint(dir)?,
        None => Vec::new(),
    };
    let key = (dir.map(Path::to_path_buf), setup.clone());
    // Held while compiling, so two snapshots built at once do not compile the same set twice.
    let mut cache = cache()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache.clock += 1;
    let now = cache.clock;
    if let Some(entry) = cache.entries.get_mut(&key)
        && entry.fingerprint == fingerprint
    {
        entry.last_used = now;
        return Ok(entry.set.clone());
    }
    let set = Arc::new(match dir {
        Some(dir) => RuleSet::load(dir, setup)?,
        None => RuleSet::builtin(setup)?,
    });
    cache.entries.remove(&key);
    cache.make_room();
    cache.entries.insert(
        key,
        Entry {
            fingerprint,
            set: set.clone(),
            last_used: now,
        },
    );
    Ok(set)
}

fn fingerprint(dir: &Path) -> Result<Fingerprint, Error> {
    let io_error = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let metadata = entry.metadata().map_err(io_error)?;
        files.push((entry.path(), metadata.len(), metadata.modified().ok()));
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(paranoia_level: u8) -> Setup {
        Setup {
            paranoia_level,
            tx: Vec::new(),
        }
    }

    #[test]
    fn unchanged_directory_reuses_set() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-waf-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rules.conf");
        std::fs::write(&file, "SecRule ARGS \"@rx a\" \"id:1,phase:1,deny\"\n").unwrap();

        let first = load_shared(Some(&dir), &setup(1)).unwrap();
        let second = load_shared(Some(&dir), &setup(1)).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let other_level = load_shared(Some(&dir), &setup(2)).unwrap();
        assert!(!Arc::ptr_eq(&first, &other_level));

        std::fs::write(
            &file,
            "SecRule ARGS \"@rx a\" \"id:1,phase:1,deny\"\nSecRule ARGS \"@rx b\" \"id:2,phase:1,deny\"\n",
        )
        .unwrap();
        let changed = load_shared(Some(&dir), &setup(1)).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(changed.rule(2).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cache_evicts_unused_sets_first() {
        let dir = std::env::temp_dir().join(format!("portcullis-waf-evict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("rules.conf"),
            "SecRule ARGS \"@rx a\" \"id:1,phase:1,deny\"\n",
        )
        .unwrap();

        // Anomaly thresholds that no other test uses, so each load adds one entry.
        let load = |threshold: u32| {
            load_shared(Some(&dir), &Setup::deployment(1, 1_000_000 + threshold)).unwrap()
        };

        let in_use = load(0);
        let mut dropped = Vec::new();
        for threshold in 1..MAX_CACHED_SETS as u32 * 2 {
            dropped.push(Arc::as_ptr(&load(threshold)));
        }

        let cached = cache().lock().unwrap().entries.len();
        assert!(cached <= MAX_CACHED_SETS, "{cached} sets cached");

        // The set still in use survived every eviction, so loading it again returns it.
        assert!(Arc::ptr_eq(&in_use, &load(0)));

        // The most recent set is still cached, the oldest dropped one was evicted.
        let last = MAX_CACHED_SETS as u32 * 2 - 1;
        assert_eq!(Arc::as_ptr(&load(last)), *dropped.last().unwrap());
        assert!(
            !cache()
                .lock()
                .unwrap()
                .entries
                .contains_key(&(Some(dir.clone()), Setup::deployment(1, 1_000_001)))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn builtin_set_is_shared() {
        let first = load_shared(None, &setup(1)).unwrap();
        let second = load_shared(None, &setup(1)).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert!(first.rule(100100).is_some());
    }
}
