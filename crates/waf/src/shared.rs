//! Compiled rule sets shared by every policy and snapshot that requests the same rules.
//!
//! Compiling the CRS takes far longer than a configuration reload should, so a rule set is
//! compiled once per rules directory and [`Setup`], and compiled again only when a file in that
//! directory changed (its name, size or modification time).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::{Error, RuleSet, Setup};

/// Name, size and modification time of every file in a rules directory, in name order.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

type Cache = HashMap<(Option<PathBuf>, Setup), (Fingerprint, Arc<RuleSet>)>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// Returns the rule set of `dir` (every `*.conf` file in name order, see [`RuleSet::load`]),
/// or the built-in rule set when `dir` is `None`, compiled after the `setup` rules. A second
/// call with the same arguments returns the same compiled set while the directory's files are
/// unchanged.
///
/// NOTE: an entry stays cached after the last configuration that used it is gone. Entries are
/// few (one per rules directory, paranoia level and threshold ever configured), but none is
/// evicted.
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
    if let Some((cached, set)) = cache.get(&key)
        && *cached == fingerprint
    {
        return Ok(set.clone());
    }
    let set = Arc::new(match dir {
        Some(dir) => RuleSet::load(dir, setup)?,
        None => RuleSet::builtin(setup)?,
    });
    cache.insert(key, (fingerprint, set.clone()));
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
    fn builtin_set_is_shared() {
        let first = load_shared(None, &setup(1)).unwrap();
        let second = load_shared(None, &setup(1)).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert!(first.rule(100100).is_some());
    }
}
