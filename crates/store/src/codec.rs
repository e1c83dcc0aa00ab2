//! Conversions between the config and key types and the text that the stores keep in rows.

use portcullis_config::{ConsumerSpec, PriceSpec, RouteSpec, ServiceSpec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::backend::{CredentialRow, KeyRow, Table};
use crate::{ApiKeyRecord, CredentialRecord, StoreError};

/// The `meta` key of the config version.
pub(crate) const VERSION_KEY: &str = "config_version";

/// Fixed-width UTC form of stored timestamps, such as `2024-05-01T12:00:00.123456Z`. Text in
/// this form sorts in time order, which the SQLite backend relies on.
const TIMESTAMP_FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Returns the `meta` key under which the secret `name` is stored.
pub(crate) fn secret_key(name: &str) -> String {
    format!("secret:{name}")
}

/// Formats a timestamp in UTC with microsecond precision, truncating any finer part.
pub(crate) fn format_timestamp(at: OffsetDateTime) -> Result<String, StoreError> {
    at.to_offset(UtcOffset::UTC)
        .format(TIMESTAMP_FORMAT)
        .map_err(|error| StoreError::Invalid(format!("timestamp {at} cannot be stored: {error}")))
}

/// Returns the current time in the stored form.
pub(crate) fn now_timestamp() -> Result<String, StoreError> {
    format_timestamp(OffsetDateTime::now_utc())
}

fn parse_timestamp(
    text: &str,
    what: impl FnOnce() -> String,
) -> Result<OffsetDateTime, StoreError> {
    PrimitiveDateTime::parse(text, TIMESTAMP_FORMAT)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|error| StoreError::corrupt(what(), error))
}

/// Parses the stored config version.
pub(crate) fn parse_version(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|error| StoreError::corrupt(format!("meta row `{VERSION_KEY}` (`{text}`)"), error))
}

/// An entity type that is stored under its name.
pub(crate) trait Entity: Serialize + DeserializeOwned {
    const TABLE: Table;

    fn name(&self) -> &str;

    /// Returns the spec as the JSON value that is stored.
    fn to_stored_json(&self) -> Result<Value, StoreError> {
        serde_json::to_value(self).map_err(|error| {
            StoreError::Invalid(format!(
                "{} `{}` cannot be encoded as JSON: {error}",
                Self::TABLE.noun(),
                self.name()
            ))
        })
    }
}

impl Entity for ServiceSpec {
    const TABLE: Table = Table::Services;

    fn name(&self) -> &str {
        &self.name
    }
}

impl Entity for RouteSpec {
    const TABLE: Table = Table::Routes;

    fn name(&self) -> &str {
        &self.name
    }
}

impl Entity for ConsumerSpec {
    const TABLE: Table = Table::Consumers;

    fn name(&self) -> &str {
        &self.name
    }

    /// Returns the spec without `api_keys`, because the store keeps keys only as hashed
    /// records in `api_keys`.
    fn to_stored_json(&self) -> Result<Value, StoreError> {
        let mut value = serde_json::to_value(self).map_err(|error| {
            StoreError::Invalid(format!(
                "consumer `{}` cannot be encoded as JSON: {error}",
                self.name
            ))
        })?;
        if let Some(object) = value.as_object_mut() {
            object.remove("api_keys");
        }
        Ok(value)
    }
}

/// Decodes one stored entity row and checks that the spec carries the row's name.
pub(crate) fn decode_entity<T: Entity>(name: &str, spec: &str) -> Result<T, StoreError> {
    let what = || format!("{} row `{name}`", T::TABLE.name());
    let entity: T =
        serde_json::from_str(spec).map_err(|error| StoreError::corrupt(what(), error))?;
    if entity.name() != name {
        let message = format!("the spec is named `{}`, not `{name}`", entity.name());
        return Err(StoreError::corrupt(what(), message));
    }
    Ok(entity)
}

/// Decodes all rows of one entity table, keeping their order.
pub(crate) fn decode_entities<T: Entity>(
    rows: Vec<(String, String)>,
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|(name, spec)| decode_entity(name, spec))
        .collect()
}

/// Encodes an AI price as the JSON text of an `ai_prices` row.
pub(crate) fn encode_price(price: &PriceSpec) -> Result<String, StoreError> {
    serde_json::to_string(price).map_err(|error| {
        StoreError::Invalid(format!(
            "the price of `{}` cannot be encoded as JSON: {error}",
            price.model
        ))
    })
}

/// Decodes one `ai_prices` row and checks that the spec carries the row's model.
pub(crate) fn decode_price(model: &str, spec: &str) -> Result<PriceSpec, StoreError> {
    let what = || format!("ai_prices row `{model}`");
    let price: PriceSpec =
        serde_json::from_str(spec).map_err(|error| StoreError::corrupt(what(), error))?;
    if price.model != model {
        let message = format!("the spec is for `{}`, not `{model}`", price.model);
        return Err(StoreError::corrupt(what(), message));
    }
    Ok(price)
}

/// Converts a key record to its row form.
pub(crate) fn key_row(record: &ApiKeyRecord) -> Result<KeyRow, StoreError> {
    let scopes = serde_json::to_string(&record.scopes).map_err(|error| {
        StoreError::Invalid(format!(
            "scopes of key `{}` cannot be encoded as JSON: {error}",
            record.id
        ))
    })?;
    Ok(KeyRow {
        id: record.id.clone(),
        consumer: record.consumer.clone(),
        hash: record.hash.clone(),
        prefix: record.prefix.clone(),
        created_at: format_timestamp(record.created_at)?,
        expires_at: record.expires_at.map(format_timestamp).transpose()?,
        revoked_at: record.revoked_at.map(format_timestamp).transpose()?,
        rotated_from: record.rotated_from.clone(),
        rotated_to: record.rotated_to.clone(),
        scopes,
        source: record.source.clone(),
        last_used_at: record.last_used_at.map(format_timestamp).transpose()?,
    })
}

/// Converts a stored credential row to a record.
pub(crate) fn credential_record(row: CredentialRow) -> Result<CredentialRecord, StoreError> {
    let column = |name: &str| format!("ai_credentials row `{}`, column `{name}`", row.name);
    let created_at = parse_timestamp(&row.created_at, || column("created_at"))?;
    let updated_at = parse_timestamp(&row.updated_at, || column("updated_at"))?;
    Ok(CredentialRecord {
        name: row.name,
        ciphertext: row.ciphertext,
        nonce: row.nonce,
        key_id: row.key_id,
        created_at,
        updated_at,
    })
}

/// Converts a stored key row back to a record.
pub(crate) fn key_record(row: KeyRow) -> Result<ApiKeyRecord, StoreError> {
    let id = row.id;
    let column = |name: &str| format!("api_keys row `{id}`, column `{name}`");
    let created_at = parse_timestamp(&row.created_at, || column("created_at"))?;
    let expires_at = match row.expires_at {
        Some(text) => Some(parse_timestamp(&text, || column("expires_at"))?),
        None => None,
    };
    let revoked_at = match row.revoked_at {
        Some(text) => Some(parse_timestamp(&text, || column("revoked_at"))?),
        None => None,
    };
    let last_used_at = match row.last_used_at {
        Some(text) => Some(parse_timestamp(&text, || column("last_used_at"))?),
        None => None,
    };
    let scopes = serde_json::from_str(&row.scopes)
        .map_err(|error| StoreError::corrupt(column("scopes"), error))?;
    Ok(ApiKeyRecord {
        id,
        consumer: row.consumer,
        hash: row.hash,
        prefix: row.prefix,
        created_at,
        expires_at,
        revoked_at,
        rotated_from: row.rotated_from,
        rotated_to: row.rotated_to,
        scopes,
        source: row.source,
        last_used_at,
    })
}

#[cfg(test)]
mod tests {
    use portcullis_config::DeclaredKey;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn timestamp_round_trips_in_utc() {
        let at = datetime!(2024-05-01 14:00:00.123456 +02:00);
        let text = format_timestamp(at).unwrap();
        assert_eq!(text, "2024-05-01T12:00:00.123456Z");
        assert_eq!(parse_timestamp(&text, String::new).unwrap(), at);
    }

    #[test]
    fn timestamp_truncates_to_microseconds() {
        let at = datetime!(2024-05-01 12:00:00.123456789 UTC);
        assert_eq!(format_timestamp(at).unwrap(), "2024-05-01T12:00:00.123456Z");
    }

    #[test]
    fn timestamp_text_sorts_in_time_order() {
        let earlier = format_timestamp(datetime!(2024-05-01 12:00:00 UTC)).unwrap();
        let later = format_timestamp(datetime!(2024-05-01 12:00:00.5 UTC)).unwrap();
        assert!(earlier < later, "{earlier} should sort before {later}");
    }

    #[test]
    fn consumer_json_omits_api_keys() {
        let consumer = ConsumerSpec {
            name: "alice".into(),
            roles: vec!["admin".into()],
            api_keys: vec![DeclaredKey::Plain("plaintext-key".into())],
            policies: Vec::new(),
            key_rotation: None,
            certificates: Vec::new(),
        };
        let value = consumer.to_stored_json().unwrap();
        assert!(
            value.get("api_keys").is_none(),
            "stored JSON {value} contains api_keys"
        );
        assert_eq!(value["name"], "alice");
    }

    #[test]
    fn entity_name_mismatch_is_corrupt() {
        let error =
            decode_entity::<ServiceSpec>("web", r#"{"name": "api", "targets": []}"#).unwrap_err();
        assert!(
            matches!(error, StoreError::Corrupt { .. }),
            "unexpected error {error:?}"
        );
        assert!(
            error.to_string().contains("services row `web`"),
            "message: {error}"
        );
    }

    #[test]
    fn version_text_must_be_a_number() {
        assert_eq!(parse_version("42").unwrap(), 42);
        assert!(matches!(
            parse_version("forty-two"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
