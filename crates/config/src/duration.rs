//! Serde helpers for durations written as `1s`, `250ms` or `2m`, or as a number of seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Deserialises a duration from a humantime string (`1s`, `500ms`) or a number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(f64),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Text(text) => humantime::parse_duration(text.trim()).map_err(|error| {
            de::Error::custom(format!(
                "invalid duration `{text}` ({error}); write it like `1s` or `250ms`"
            ))
        }),
        Raw::Seconds(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Duration::from_secs_f64(seconds))
        }
        Raw::Seconds(seconds) => Err(de::Error::custom(format!("invalid duration {seconds}"))),
    }
}

/// Serialises a duration in the humantime form that [`deserialize`] reads back.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*duration).to_string())
}

/// Serde helpers for an optional duration in the same forms.
pub mod option {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::deserialize(deserializer).map(Some)
    }

    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => super::serialize(duration, serializer),
            None => serializer.serialize_none(),
        }
    }
}
