//! Aggregated usage and cost of AI calls: the rows of the `ai_usage` table and their grouping
//! for reports.
//!
//! Rows are usage data, not configuration, so writing them never changes the config version.

use std::collections::BTreeMap;

use serde::Serialize;

/// Length of one aggregation period, in seconds. Reports select whole periods.
pub const BUCKET_SECONDS: i64 = 3600;

/// Returns the start of the period that contains `unix_seconds`.
pub fn bucket_start(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(BUCKET_SECONDS) * BUCKET_SECONDS
}

/// The identity of one `ai_usage` row. An empty consumer or credential id means that the call
/// had none, as on a route without authentication.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AiUsageKey {
    /// Start of the period, in seconds since the Unix epoch.
    pub bucket_start: i64,
    pub consumer: String,
    pub credential_id: String,
    pub route: String,
    /// The model as the client sent it.
    pub model: String,
    /// `provider/model` of the target that served the calls.
    pub target: String,
}

/// Calls, tokens by kind and cost, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AiUsageTotals {
    pub calls: u64,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// Sum of the calls' costs; a call whose target has no price adds 0.
    pub cost: f64,
    /// Calls with a token count estimated from characters.
    pub estimated_calls: u64,
}

impl AiUsageTotals {
    /// Adds `other` to these totals. Counts saturate instead of overflowing.
    pub fn add(&mut self, other: &AiUsageTotals) {
        self.calls = self.calls.saturating_add(other.calls);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.cost += other.cost;
        self.estimated_calls = self.estimated_calls.saturating_add(other.estimated_calls);
    }
}

/// One `ai_usage` row.
#[derive(Debug, Clone, PartialEq)]
pub struct AiUsageRow {
    pub key: AiUsageKey,
    pub totals: AiUsageTotals,
}

/// The rows a report reads: periods that start in `[from, to)`, narrowed by the filters that
/// are set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AiUsageFilter {
    /// Seconds since the Unix epoch.
    pub from: i64,
    /// Seconds since the Unix epoch, exclusive.
    pub to: i64,
    pub consumer: Option<String>,
    pub credential_id: Option<String>,
    pub route: Option<String>,
    pub model: Option<String>,
}

/// A dimension that a report can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AiUsageDimension {
    Consumer,
    CredentialId,
    Route,
    Model,
    Target,
    /// The start of the hour.
    Hour,
}

impl AiUsageDimension {
    /// Every dimension, in the order that error messages list them.
    pub const ALL: [AiUsageDimension; 6] = [
        AiUsageDimension::Consumer,
        AiUsageDimension::CredentialId,
        AiUsageDimension::Route,
        AiUsageDimension::Model,
        AiUsageDimension::Target,
        AiUsageDimension::Hour,
    ];

    /// Returns the name used in `group_by` and as the key of a report row.
    pub fn name(self) -> &'static str {
        match self {
            AiUsageDimension::Consumer => "consumer",
            AiUsageDimension::CredentialId => "credential_id",
            AiUsageDimension::Route => "route",
            AiUsageDimension::Model => "model",
            AiUsageDimension::Target => "target",
            AiUsageDimension::Hour => "hour",
        }
    }

    /// Parses a dimension name.
    pub fn parse(name: &str) -> Option<AiUsageDimension> {
        Self::ALL
            .into_iter()
            .find(|dimension| dimension.name() == name)
    }

    /// Returns this dimension's value in `key`. The hour is the period's start in seconds since
    /// the Unix epoch, as text, so that the caller can format it.
    fn value(self, key: &AiUsageKey) -> String {
        match self {
            AiUsageDimension::Consumer => key.consumer.clone(),
            AiUsageDimension::CredentialId => key.credential_id.clone(),
            AiUsageDimension::Route => key.route.clone(),
            AiUsageDimension::Model => key.model.clone(),
            AiUsageDimension::Target => key.target.clone(),
            AiUsageDimension::Hour => key.bucket_start.to_string(),
        }
    }
}

/// Sums `rows` per distinct value of the `dimensions`, in the order given. Returns the groups
/// sorted by their values, each with one value per dimension.
pub fn group_ai_usage(
    rows: &[AiUsageRow],
    dimensions: &[AiUsageDimension],
) -> Vec<(Vec<String>, AiUsageTotals)> {
    let mut groups: BTreeMap<Vec<String>, AiUsageTotals> = BTreeMap::new();
    for row in rows {
        let values = dimensions
            .iter()
            .map(|dimension| dimension.value(&row.key))
            .collect();
        groups.entry(values).or_default().add(&row.totals);
    }
    groups.into_iter().collect()
}

/// Converts a count to a database integer. Counts above `i64::MAX` are stored as `i64::MAX`.
pub(crate) fn to_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// An `ai_usage` row as the databases return it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SqlRow {
    pub bucket_start: i64,
    pub consumer: String,
    pub credential_id: String,
    pub route: String,
    pub model: String,
    pub target: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: f64,
    pub estimated_calls: i64,
}

impl From<SqlRow> for AiUsageRow {
    fn from(row: SqlRow) -> Self {
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        AiUsageRow {
            key: AiUsageKey {
                bucket_start: row.bucket_start,
                consumer: row.consumer,
                credential_id: row.credential_id,
                route: row.route,
                model: row.model,
                target: row.target,
            },
            totals: AiUsageTotals {
                calls: count(row.calls),
                input_tokens: count(row.input_tokens),
                cache_read_tokens: count(row.cache_read_tokens),
                cache_write_tokens: count(row.cache_write_tokens),
                output_tokens: count(row.output_tokens),
                reasoning_tokens: count(row.reasoning_tokens),
                cost: row.cost,
                estimated_calls: count(row.estimated_calls),
            },
        }
    }
}

/// Columns of [`SqlRow`], in order.
pub(crate) const COLUMNS: &str = "bucket_start, consumer, credential_id, route, model, target, calls, input_tokens, \
     cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost, estimated_calls";

/// Inserts a row or adds its totals to the existing one. The same text runs on SQLite and
/// PostgreSQL.
pub(crate) const UPSERT: &str = "INSERT INTO ai_usage (bucket_start, consumer, credential_id, route, model, target, calls, \
     input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost, estimated_calls) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (bucket_start, consumer, credential_id, route, model, target) DO UPDATE SET \
     calls = ai_usage.calls + excluded.calls, \
     input_tokens = ai_usage.input_tokens + excluded.input_tokens, \
     cache_read_tokens = ai_usage.cache_read_tokens + excluded.cache_read_tokens, \
     cache_write_tokens = ai_usage.cache_write_tokens + excluded.cache_write_tokens, \
     output_tokens = ai_usage.output_tokens + excluded.output_tokens, \
     reasoning_tokens = ai_usage.reasoning_tokens + excluded.reasoning_tokens, \
     cost = ai_usage.cost + excluded.cost, \
     estimated_calls = ai_usage.estimated_calls + excluded.estimated_calls";

/// Binds the parameters of [`UPSERT`] for `row`.
pub(crate) fn bind_upsert<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    row: &'q AiUsageRow,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let totals = &row.totals;
    query
        .bind(row.key.bucket_start)
        .bind(row.key.consumer.as_str())
        .bind(row.key.credential_id.as_str())
        .bind(row.key.route.as_str())
        .bind(row.key.model.as_str())
        .bind(row.key.target.as_str())
        .bind(to_sql(totals.calls))
        .bind(to_sql(totals.input_tokens))
        .bind(to_sql(totals.cache_read_tokens))
        .bind(to_sql(totals.cache_write_tokens))
        .bind(to_sql(totals.output_tokens))
        .bind(to_sql(totals.reasoning_tokens))
        .bind(totals.cost)
        .bind(to_sql(totals.estimated_calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(consumer: &str, model: &str, bucket: i64, calls: u64, cost: f64) -> AiUsageRow {
        AiUsageRow {
            key: AiUsageKey {
                bucket_start: bucket,
                consumer: consumer.into(),
                credential_id: format!("key-{consumer}"),
                route: "llm".into(),
                model: model.into(),
                target: "p/m".into(),
            },
            totals: AiUsageTotals {
                calls,
                input_tokens: calls * 10,
                output_tokens: calls * 2,
                cost,
                ..AiUsageTotals::default()
            },
        }
    }

    #[test]
    fn bucket_start_rounds_down_to_the_hour() {
        assert_eq!(bucket_start(7199), 3600);
        assert_eq!(bucket_start(7200), 7200);
        assert_eq!(bucket_start(-1), -3600);
    }

    #[test]
    fn grouping_sums_per_value() {
        let rows = [
            row("alice", "smart", 0, 1, 0.5),
            row("alice", "fast", 3600, 2, 0.25),
            row("bob", "smart", 0, 4, 1.0),
        ];
        let groups = group_ai_usage(&rows, &[AiUsageDimension::Consumer]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0, vec!["alice".to_string()]);
        assert_eq!(groups[0].1.calls, 3);
        assert_eq!(groups[0].1.input_tokens, 30);
        assert_eq!(groups[0].1.cost, 0.75);
        assert_eq!(groups[1].0, vec!["bob".to_string()]);
        assert_eq!(groups[1].1.calls, 4);
    }

    #[test]
    fn grouping_by_two_dimensions_keeps_their_order() {
        let rows = [
            row("alice", "smart", 0, 1, 0.0),
            row("alice", "smart", 3600, 1, 0.0),
            row("alice", "fast", 0, 1, 0.0),
        ];
        let groups = group_ai_usage(&rows, &[AiUsageDimension::Model, AiUsageDimension::Hour]);
        let keys: Vec<Vec<String>> = groups.into_iter().map(|(values, _)| values).collect();
        assert_eq!(
            keys,
            vec![
                vec!["fast".to_string(), "0".to_string()],
                vec!["smart".to_string(), "0".to_string()],
                vec!["smart".to_string(), "3600".to_string()],
            ]
        );
    }

    #[test]
    fn grouping_by_nothing_returns_one_total() {
        let rows = [row("a", "m", 0, 1, 0.0), row("b", "m", 0, 2, 0.0)];
        let groups = group_ai_usage(&rows, &[]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1.calls, 3);
    }

    #[test]
    fn dimension_names_parse_back() {
        for dimension in AiUsageDimension::ALL {
            assert_eq!(AiUsageDimension::parse(dimension.name()), Some(dimension));
        }
        assert_eq!(AiUsageDimension::parse("tenant"), None);
    }
}
