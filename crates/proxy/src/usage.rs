//! Last-use times of API keys, recorded in memory and flushed to the store in batches, so that a
//! request never writes to the store.

use std::collections::HashMap;
use std::sync::Mutex;

/// Seconds since the Unix epoch at which each key was last used, since the last drain.
#[derive(Debug, Default)]
pub struct KeyUsage {
    pending: Mutex<HashMap<String, i64>>,
}

impl KeyUsage {
    /// Records a use of the key `id` at `now` (seconds since the Unix epoch).
    pub fn record(&self, id: &str, now: i64) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match pending.get_mut(id) {
            Some(last) => *last = now,
            None => {
                pending.insert(id.to_string(), now);
            }
        }
    }

    /// Takes the recorded uses, leaving the record empty.
    pub fn drain(&self) -> HashMap<String, i64> {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}
